"""Domain logic, one module per domain; no HTTP and no Strawberry here. Import the modules themselves."""
