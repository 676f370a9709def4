// One build, two pages: the console (Preact, index.html) and GraphiQL (React, graphiql.html). Written into the
// Python package so that a server installed from the wheel needs no Node (docs/architecture.md).
import { resolve } from "node:path";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/assets/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: resolve(import.meta.dirname, "../aicm/web/static"),
    emptyOutDir: true,
    assetsDir: "",
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 4096,
    rollupOptions: {
      input: { index: resolve(import.meta.dirname, "index.html"), graphiql: resolve(import.meta.dirname, "graphiql.html") },
    },
  },
});
