// The console's only way to the server: the public GraphQL API over HTTP and graphql-transport-ws.
// The access token lives in this module's memory only. With security.refresh_cookie on, the refresh token is
// an HttpOnly cookie the page never sees; otherwise it is kept here too (and a reload signs out).
import { createClient, type Client } from "graphql-ws";

export interface ConsoleConfig {
  oauthProviders: string[];
  refreshCookie: boolean;
  allowRegistration: boolean;
}

export const config: ConsoleConfig = (() => {
  const meta = document.querySelector('meta[name="aicm-config"]');
  const raw = meta?.getAttribute("content") || "{}";
  const parsed = JSON.parse(raw) as Partial<ConsoleConfig>;
  return {
    oauthProviders: parsed.oauthProviders ?? [],
    refreshCookie: parsed.refreshCookie ?? false,
    allowRegistration: parsed.allowRegistration ?? false,
  };
})();

export interface Viewer {
  id: string;
  email: string;
  name: string;
  roles: { name: string; permissions: string[] }[];
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly field?: string,
    readonly reason?: string,
  ) {
    super(message);
  }
}

let accessToken: string | null = null;
let refreshTokenInMemory: string | null = null;
let expiresAt = 0;
let refreshing: Promise<boolean> | null = null;
let refreshTimer: number | undefined;
const listeners = new Set<(v: Viewer | null) => void>();
let viewer: Viewer | null = null;

export const onViewer = (fn: (v: Viewer | null) => void) => {
  listeners.add(fn);
  return () => listeners.delete(fn);
};
export const currentViewer = () => viewer;

function setViewer(v: Viewer | null) {
  viewer = v;
  listeners.forEach((fn) => fn(v));
}

function csrfToken(): string | undefined {
  const m = document.cookie.match(/(?:^|;\s*)aicm_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : undefined;
}

const VIEWER = "user { id email name roles { name permissions } }";
// With the cookie flow the page never asks for the refresh token: it only travels in the HttpOnly cookie.
const ISSUED = `accessToken ${config.refreshCookie ? "" : "refreshToken"} expiresIn ${VIEWER}`;

interface Payload {
  accessToken: string;
  refreshToken?: string;
  expiresIn: number;
  user: Viewer;
}

let lifetime = 0;

/** True when the access token is missing or within its last tenth (at most 10 s) of life. */
const stale = () => !accessToken || Date.now() > expiresAt - Math.min(10_000, lifetime / 10);

function signedIn(p: Payload) {
  accessToken = p.accessToken;
  if (!config.refreshCookie && p.refreshToken) refreshTokenInMemory = p.refreshToken;
  lifetime = p.expiresIn * 1000;
  expiresAt = Date.now() + lifetime;
  // Refresh ahead of the expiry: at four fifths of the token's life, at most 30 s before it ends.
  scheduleRefresh(lifetime - Math.min(30_000, lifetime / 5));
  setViewer(p.user);
}

function scheduleRefresh(ms: number) {
  window.clearTimeout(refreshTimer);
  refreshTimer = window.setTimeout(() => void refresh(), Math.max(1_000, ms));
}

function signedOut() {
  accessToken = null;
  refreshTokenInMemory = null;
  expiresAt = 0;
  lifetime = 0;
  window.clearTimeout(refreshTimer);
  setViewer(null);
  ws?.terminate();
}

async function post(query: string, variables: Record<string, unknown> | undefined, auth: boolean) {
  const headers: Record<string, string> = { "Content-Type": "application/json", Accept: "application/json" };
  if (auth && accessToken) headers.Authorization = `Bearer ${accessToken}`;
  const csrf = csrfToken();
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch("/graphql", {
    method: "POST",
    credentials: "same-origin",
    headers,
    body: JSON.stringify({ query, variables }),
  });
  let body: { data?: any; errors?: { message: string; extensions?: Record<string, string> }[] };
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`HTTP ${response.status}`, response.status === 401 ? "UNAUTHENTICATED" : "INTERNAL_SERVER_ERROR");
  }
  if (body.errors?.length) {
    const e = body.errors[0];
    const ext = e.extensions ?? {};
    throw new ApiError(e.message, ext.code ?? "INTERNAL_SERVER_ERROR", ext.field, ext.reason);
  }
  if (response.status === 401) throw new ApiError("Unauthenticated", "UNAUTHENTICATED");
  return body.data;
}

/** A new access token from the refresh cookie (or the in-memory refresh token); false when signed out. */
export function refresh(): Promise<boolean> {
  if (!config.refreshCookie && !refreshTokenInMemory) return Promise.resolve(false);
  refreshing ??= (async () => {
    try {
      const data = await post(
        `mutation Refresh($t: String!) { refreshToken(refreshToken: $t) { ${ISSUED} } }`,
        { t: config.refreshCookie ? "" : refreshTokenInMemory },
        false,
      );
      signedIn(data.refreshToken);
      return true;
    } catch (e) {
      // Refused (expired, revoked, reused): signed out. Rate limited or unreachable: try again soon.
      if (e instanceof ApiError && e.code === "UNAUTHENTICATED") signedOut();
      else scheduleRefresh(5_000);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Run a query or mutation; an UNAUTHENTICATED answer refreshes the token once and retries. */
export async function gql<T = any>(query: string, variables?: Record<string, unknown>): Promise<T> {
  if (accessToken && stale()) await refresh();
  try {
    return await post(query, variables, true);
  } catch (e) {
    if (e instanceof ApiError && e.code === "UNAUTHENTICATED" && accessToken && (await refresh())) {
      return post(query, variables, true);
    }
    throw e;
  }
}

export async function login(email: string, password: string) {
  const data = await post(
    `mutation Login($i: LoginInput!) { login(input: $i) { ${ISSUED} } }`,
    { i: { email, password } },
    false,
  );
  signedIn(data.login);
}

export async function register(email: string, password: string, name: string) {
  const data = await post(
    `mutation Register($i: RegisterInput!) { register(input: $i) { ${ISSUED} } }`,
    { i: { email, password, name } },
    false,
  );
  signedIn(data.register);
}

export async function logout() {
  try {
    await gql("mutation { logout }");
  } finally {
    signedOut();
  }
}

/** At start: an OAuth sign-in's fragment (#access_token=…), taken out of the URL at once, else the cookie. */
export async function resume(): Promise<string | null> {
  const fragment = new URLSearchParams(location.hash.startsWith("#access_token=") || location.hash.startsWith("#error=") ? location.hash.slice(1) : "");
  if (fragment.has("access_token") || fragment.has("error")) {
    history.replaceState(null, "", location.pathname + "#/");
    if (fragment.has("error")) return fragment.get("error_description") || fragment.get("error");
    accessToken = fragment.get("access_token");
    const refreshToken = fragment.get("refresh_token");
    lifetime = Number(fragment.get("expires_in") || 60) * 1000;
    expiresAt = Date.now() + lifetime;
    if (refreshToken) {
      // Trade the URL's refresh token for a cookie (or keep it in memory): it rotates, so the old one is dead.
      refreshTokenInMemory = refreshToken;
      const cookie = config.refreshCookie;
      config.refreshCookie = false;
      const ok = await refresh();
      config.refreshCookie = cookie;
      if (cookie) refreshTokenInMemory = null;
      return ok ? null : "Sign-in failed";
    }
    const me = await gql(`{ me { id email name roles { name permissions } } }`);
    setViewer(me.me);
    return null;
  }
  if (config.refreshCookie && csrfToken()) await refresh();
  return null;
}

// ---------------------------------------------------------------- subscriptions

let ws: Client | null = null;
let forceRefresh = false;

export function socket(): Client {
  ws ??= createClient({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`,
    lazy: true,
    retryAttempts: 1_000,
    // Quick first retries: a socket the server closed at the token's expiry comes back at once.
    retryWait: (retries) => new Promise((resolve) => setTimeout(resolve, Math.min(250 * 2 ** retries, 10_000))),
    shouldRetry: () => viewer !== null,
    connectionParams: async () => {
      if (forceRefresh || stale()) {
        forceRefresh = false;
        await refresh();
      }
      return accessToken ? { authorization: `Bearer ${accessToken}` } : {};
    },
    on: {
      closed: (event) => {
        // 4403: the token was refused (expired or its session ended); the next attempt refreshes first.
        if ((event as CloseEvent)?.code === 4403) forceRefresh = true;
      },
    },
  });
  return ws;
}

export interface Sink<T> {
  next(value: T): void;
  error?(e: unknown): void;
  complete?(): void;
}

export function subscribe<T>(query: string, variables: Record<string, unknown>, sink: Sink<T>): () => void {
  return socket().subscribe<T>(
    { query, variables },
    {
      next: (r) => {
        if (r.errors?.length) sink.error?.(r.errors[0]);
        else if (r.data) sink.next(r.data as T);
      },
      error: (e) => sink.error?.(e),
      complete: () => sink.complete?.(),
    },
  );
}

/** Called after the socket came back (a retry): what changed meanwhile may have to be read again. */
export function onReconnect(fn: () => void): () => void {
  return socket().on("connected", (_socket, _payload, wasRetry) => {
    if (wasRetry) fn();
  });
}

export const can = (permission: string) =>
  viewer?.roles.some((r) => r.permissions.includes(permission) || r.permissions.includes("*")) ?? false;
