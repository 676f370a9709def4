"""Pure ASGI middleware, one class per module; ``aicm.app`` lists them outermost first."""
