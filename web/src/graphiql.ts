// GraphiQL from the package's own assets (no CDN). Its storage never keeps request headers (where an
// Authorization header lives): GraphiQL is told not to persist them, and the storage below strips any
// `headers` field from what it writes (tabs, history), so no token reaches localStorage.
import { createGraphiQLFetcher, type Storage } from "@graphiql/toolkit";
import { GraphiQL } from "graphiql";
import "graphiql/style.css";
import "./graphiql.css";
import { createClient } from "graphql-ws";
import { createElement } from "react";
import { createRoot } from "react-dom/client";

function csrfToken(): string | undefined {
  const m = document.cookie.match(/(?:^|;\s*)aicm_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : undefined;
}

function withoutHeaders(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutHeaders);
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (k !== "headers") out[k] = withoutHeaders(v);
    return out;
  }
  return value;
}

/** localStorage, minus request headers. */
export const headerlessStorage: Storage = {
  getItem: (key) => localStorage.getItem(key),
  removeItem: (key) => localStorage.removeItem(key),
  clear: () => localStorage.clear(),
  get length() {
    return localStorage.length;
  },
  setItem(key, value) {
    if (/headers$/i.test(key)) return;
    let cleaned = value;
    try {
      cleaned = JSON.stringify(withoutHeaders(JSON.parse(value)));
    } catch {
      if (/authorization|bearer/i.test(value)) return;
    }
    localStorage.setItem(key, cleaned);
  },
};

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`;
let wsHeaders: Record<string, unknown> = {};
const wsClient = createClient({
  url: wsUrl,
  lazy: true,
  connectionParams: () => {
    const auth = Object.entries(wsHeaders).find(([k]) => k.toLowerCase() === "authorization");
    return auth ? { authorization: String(auth[1]) } : {};
  },
});

const httpFetcher = createGraphiQLFetcher({ url: "/graphql", wsClient });

const fetcher: typeof httpFetcher = (params, opts) => {
  wsHeaders = (opts?.headers as Record<string, unknown>) ?? {};
  const csrf = csrfToken();
  const headers = { ...(opts?.headers ?? {}), ...(csrf ? { "X-CSRF-Token": csrf } : {}) };
  return httpFetcher(params, { ...opts, headers });
};

createRoot(document.getElementById("graphiql")!).render(
  createElement(GraphiQL, {
    fetcher,
    storage: headerlessStorage,
    shouldPersistHeaders: false,
    defaultQuery: "# Sign in with the login mutation, then put your access token in Headers as Authorization.\n{\n  me { id email name }\n}\n",
  }),
);
