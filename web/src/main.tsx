// The web console (CONTRACT §12): hash routes, one component per page, data from the GraphQL API only.
import "diff2html/bundles/css/diff2html.min.css";
import "./style.css";
import { html as diffHtml } from "diff2html";
import { render } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { ApiError, can, config, currentViewer, gql, login, logout, onReconnect, onViewer, register, resume, subscribe, type Viewer } from "./api";
import { Line, useTaskLog } from "./log";

// ---------------------------------------------------------------- helpers

const ROLE_RANK: Record<string, number> = { viewer: 1, developer: 2, maintainer: 3, owner: 4 };
const FINISHED = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]);

function useRoute(): string[] {
  const parse = () => (location.hash.replace(/^#\/?/, "") || "").split("/").filter(Boolean);
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

const go = (path: string) => (location.hash = `#/${path}`);
const money = (v: number | null | undefined) => (v == null ? "—" : `$${v.toFixed(4)}`);
const when = (v: string | null | undefined) => (v ? new Date(v).toLocaleString() : "—");
const message = (e: unknown) => (e instanceof ApiError ? `${e.message} (${e.code})` : e instanceof Error ? e.message : String(e));

/** Load data; `reload` runs it again. Errors are shown, not thrown. */
function useQuery<T>(fn: () => Promise<T>, deps: unknown[]): { data: T | null; error: string | null; reload: () => void; set: (t: T) => void } {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    fn().then(
      (d) => live && (setData(d), setError(null)),
      (e) => live && setError(message(e)),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  return { data, error, reload: useCallback(() => setN((x) => x + 1), []), set: setData };
}

/** Run a mutation from a button: busy state and the error next to it. */
function useAction(): [(fn: () => Promise<unknown>) => Promise<void>, boolean, string | null] {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async (fn: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await fn();
    } catch (e) {
      setError(message(e));
    } finally {
      setBusy(false);
    }
  };
  return [run, busy, error];
}

const Err = ({ error }: { error: string | null }) => (error ? <p class="error" role="alert">{error}</p> : null);
const Status = ({ status }: { status: string }) => <span class={`status ${status}`} data-testid="task-status">{status}</span>;

/** A query that names API parts not every server has (approvals, budgets, agent credentials): null if refused. */
async function optional<T>(query: string, variables?: Record<string, unknown>): Promise<T | null> {
  try {
    return await gql<T>(query, variables);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- sign in

function SignIn({ notice }: { notice: string | null }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [mode, setMode] = useState<"login" | "register">("login");
  const [run, busy, error] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    void run(() => (mode === "login" ? login(email, password) : register(email, password, name)));
  };
  return (
    <main>
      <div class="card">
        <h1>{mode === "login" ? "Sign in" : "Create an account"}</h1>
        <Err error={notice} />
        <form onSubmit={submit}>
          <label for="email">Email</label>
          <input id="email" type="email" autocomplete="username" required value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
          {mode === "register" && (
            <>
              <label for="name">Name</label>
              <input id="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
            </>
          )}
          <label for="password">Password</label>
          <input id="password" type="password" autocomplete={mode === "login" ? "current-password" : "new-password"} required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
          <div>
            <button type="submit" disabled={busy}>{mode === "login" ? "Sign in" : "Create account"}</button>
            {config.allowRegistration && (
              <button type="button" class="secondary" onClick={() => setMode(mode === "login" ? "register" : "login")}>
                {mode === "login" ? "Create an account" : "I have an account"}
              </button>
            )}
          </div>
          <Err error={error} />
        </form>
        {config.oauthProviders.length > 0 && (
          <div>
            <h2>Or sign in with</h2>
            <div class="row">
              {config.oauthProviders.map((p) => (
                <a key={p} class="button" href={`/auth/oauth/${encodeURIComponent(p)}/login`}>
                  Sign in with {p[0].toUpperCase() + p.slice(1)}
                </a>
              ))}
            </div>
          </div>
        )}
        {!config.refreshCookie && <p class="muted">This server keeps no sign-in cookie (security.refresh_cookie is off): reloading the page signs you out.</p>}
      </div>
    </main>
  );
}

// ---------------------------------------------------------------- projects

const PROJECT_ROW = "id name slug description status defaultBranch viewerRole { name }";

function Projects() {
  const [search, setSearch] = useState("");
  const { data, error, reload } = useQuery(
    () => gql(`query P($s: String) { projects(first: 100, search: $s) { totalCount edges { node { ${PROJECT_ROW} } } } }`, { s: search || null }),
    [search],
  );
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [repositoryUrl, setRepositoryUrl] = useState("");
  const [run, busy, createError] = useAction();
  const create = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const r = await gql(`mutation C($i: CreateProjectInput!) { createProject(input: $i) { id } }`, { i: { name, description, repositoryUrl } });
      go(`p/${r.createProject.id}`);
    });
  };
  return (
    <main>
      <h1>Projects</h1>
      <div class="card">
        <label for="search">Search projects</label>
        <input id="search" type="search" value={search} onInput={(e) => setSearch(e.currentTarget.value)} placeholder="name or description" />
        <Err error={error} />
        <table>
          <thead>
            <tr><th>Name</th><th class="opt">Description</th><th>Your role</th></tr>
          </thead>
          <tbody>
            {data?.projects.edges.map(({ node }: any) => (
              <tr key={node.id}>
                <td><a href={`#/p/${node.id}`}>{node.name}</a></td>
                <td class="opt">{node.description}</td>
                <td>{node.viewerRole?.name ?? "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {data && data.projects.totalCount === 0 && <p class="muted">No projects yet.</p>}
      </div>
      {can("project:create") && (
        <form class="card" onSubmit={create} aria-labelledby="new-project">
          <h2 id="new-project">New project</h2>
          <label for="pname">Name</label>
          <input id="pname" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
          <label for="pdesc">Description</label>
          <input id="pdesc" value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
          <label for="prepo">Repository URL (empty: a new repository)</label>
          <input id="prepo" value={repositoryUrl} onInput={(e) => setRepositoryUrl(e.currentTarget.value)} placeholder="https://… or git@host:path" />
          <div><button type="submit" disabled={busy}>Create project</button></div>
          <Err error={createError} />
        </form>
      )}
      <button class="secondary" onClick={reload}>Refresh</button>
    </main>
  );
}

// ---------------------------------------------------------------- project

interface ProjectPerms {
  role: string | null;
  perms: Set<string>;
}

function projectPerms(project: any): ProjectPerms {
  const perms = new Set<string>(project.viewerRole?.permissions ?? []);
  for (const r of currentViewer()?.roles ?? []) r.permissions.forEach((p) => perms.add(p));
  return { role: project.viewerRole?.name ?? null, perms };
}

const TASK_ROW = "id prompt status costUsd branch createdAt createdBy { id name email } mergedAt pushedAt";

function Project({ id }: { id: string }) {
  const { data, error, reload, set } = useQuery(
    () =>
      gql(
        `query Project($id: ID!) { project(id: $id) { id name slug description repositoryUrl defaultBranch status hasCredential
           viewerRole { name permissions } owner { id name email }
           members { addedAt user { id name email } role { id name } }
           tasks(first: 50) { edges { node { ${TASK_ROW} } } } } }`,
        { id },
      ),
    [id],
  );
  // Live: every task change in the project updates its row.
  useEffect(
    () =>
      subscribe<{ projectEvents: any }>(
        `subscription E($id: ID!) { projectEvents(projectId: $id) { type task { ${TASK_ROW} } } }`,
        { id },
        {
          next: ({ projectEvents: ev }) => {
            if (ev.type === "TASK_CREATED" || ev.type === "TASK_UPDATED") {
              set((prev: any) => {
                if (!prev || !ev.task) return prev;
                const edges = prev.project.tasks.edges.filter((e: any) => e.node.id !== ev.task.id);
                const at = prev.project.tasks.edges.findIndex((e: any) => e.node.id === ev.task.id);
                const next = { node: ev.task };
                if (at < 0) edges.unshift(next);
                else edges.splice(at, 0, next);
                return { project: { ...prev.project, tasks: { edges } } };
              });
            } else if (ev.type.startsWith("MEMBER_") || ev.type === "PROJECT_UPDATED") reload();
          },
        },
      ),
    [id],
  );
  useEffect(() => onReconnect(reload), [id]);
  if (error) return <main><Err error={error} /></main>;
  if (!data) return <main><p>Loading…</p></main>;
  const p = data.project;
  const perms = projectPerms(p);
  return (
    <main>
      <p><a href="#/">Projects</a> /</p>
      <h1>{p.name}</h1>
      <p class="muted">
        {[p.description, p.repositoryUrl, p.defaultBranch && `default branch ${p.defaultBranch}`, `your role: ${perms.role ?? "none"}`]
          .filter(Boolean)
          .join(" · ")}
      </p>
      {perms.perms.has("task:create") && <NewTask projectId={id} />}
      <Tasks tasks={p.tasks.edges.map((e: any) => e.node)} />
      <Members project={p} perms={perms} onChange={reload} />
      {perms.perms.has("project:update") && <Settings project={p} onChange={reload} />}
    </main>
  );
}

function NewTask({ projectId }: { projectId: string }) {
  const [prompt, setPrompt] = useState("");
  const [baseRef, setBaseRef] = useState("");
  const [budget, setBudget] = useState("");
  const [run, busy, error] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const input: Record<string, unknown> = { projectId, prompt, baseRef: baseRef || null };
      if (budget) input.maxBudgetUsd = Number(budget);
      const r = await gql(`mutation T($i: CreateTaskInput!) { createTask(input: $i) { id } }`, { i: input });
      go(`t/${r.createTask.id}`);
    });
  };
  return (
    <form class="card" onSubmit={submit} aria-labelledby="new-task">
      <h2 id="new-task">New task</h2>
      <label for="prompt">Prompt</label>
      <textarea id="prompt" required value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} />
      <details>
        <summary>Options</summary>
        <label for="baseref">Base branch, tag or commit (default: the default branch)</label>
        <input id="baseref" value={baseRef} onInput={(e) => setBaseRef(e.currentTarget.value)} />
        <label for="budget">Budget in USD (optional)</label>
        <input id="budget" type="number" min="0" step="0.01" value={budget} onInput={(e) => setBudget(e.currentTarget.value)} />
      </details>
      <div><button type="submit" disabled={busy}>Start task</button></div>
      <Err error={error} />
    </form>
  );
}

function Tasks({ tasks }: { tasks: any[] }) {
  return (
    <section class="card" aria-labelledby="tasks-h">
      <h2 id="tasks-h">Tasks</h2>
      {tasks.length === 0 ? (
        <p class="muted">No tasks yet.</p>
      ) : (
        <table>
          <thead><tr><th>Prompt</th><th>Status</th><th>Cost</th><th class="opt">Branch</th><th class="opt">By</th></tr></thead>
          <tbody>
            {tasks.map((t) => (
              <tr key={t.id} data-task={t.id}>
                <td><a href={`#/t/${t.id}`}>{t.prompt.split("\n")[0].slice(0, 80) || "(empty)"}</a></td>
                <td><Status status={t.status} />{t.mergedAt && <span class="muted"> merged</span>}</td>
                <td>{money(t.costUsd)}</td>
                <td class="opt"><code>{t.branch ?? "—"}</code></td>
                <td class="opt">{t.createdBy?.name || t.createdBy?.email}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Members({ project, perms, onChange }: { project: any; perms: ProjectPerms; onChange: () => void }) {
  const manage = perms.perms.has("member:manage");
  const { data: roles } = useQuery(() => (manage ? gql(`{ roles(scope: PROJECT) { id name } }`) : Promise.resolve(null)), [manage]);
  const [who, setWho] = useState("");
  const [roleId, setRoleId] = useState("");
  const [run, busy, error] = useAction();
  const findUser = async (text: string): Promise<string> => {
    if (!text.includes("@")) return text;
    const r = await gql(`query U($s: String!) { users(search: $s, first: 5) { edges { node { id email } } } }`, { s: text });
    const hit = r.users.edges.find((e: any) => e.node.email.toLowerCase() === text.toLowerCase());
    if (!hit) throw new Error(`No user ${text} that you may see; ask for their user ID`);
    return hit.node.id;
  };
  const add = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const userId = await findUser(who.trim());
      await gql(`mutation A($p: ID!, $u: ID!, $r: ID!) { addProjectMember(projectId: $p, userId: $u, roleId: $r) { addedAt } }`, {
        p: project.id, u: userId, r: roleId || roles?.roles.find((x: any) => x.name === "developer")?.id,
      });
      setWho("");
      onChange();
    });
  };
  const change = (userId: string, r: string) =>
    run(async () => {
      await gql(`mutation M($p: ID!, $u: ID!, $r: ID!) { updateProjectMember(projectId: $p, userId: $u, roleId: $r) { addedAt } }`, { p: project.id, u: userId, r });
      onChange();
    });
  const remove = (userId: string) =>
    run(async () => {
      await gql(`mutation R($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }`, { p: project.id, u: userId });
      onChange();
    });
  return (
    <section class="card" aria-labelledby="members-h">
      <h2 id="members-h">Members</h2>
      <table>
        <thead><tr><th>Member</th><th>Role</th>{manage && <th><span class="sr-only">Actions</span></th>}</tr></thead>
        <tbody>
          {project.members.map((m: any) => (
            <tr key={m.user.id}>
              <td>{m.user.name || m.user.email} <span class="muted opt">{m.user.email}</span></td>
              <td>
                {manage && roles ? (
                  <select aria-label={`Role of ${m.user.email}`} value={m.role.id} onChange={(e) => void change(m.user.id, e.currentTarget.value)}>
                    {roles.roles.map((r: any) => <option key={r.id} value={r.id}>{r.name}</option>)}
                  </select>
                ) : (
                  m.role.name
                )}
              </td>
              {manage && <td><button class="secondary" onClick={() => void remove(m.user.id)} aria-label={`Remove ${m.user.email}`}>Remove</button></td>}
            </tr>
          ))}
        </tbody>
      </table>
      {manage && roles && (
        <form onSubmit={add} class="row">
          <div>
            <label for="member-who">User email or ID</label>
            <input id="member-who" required value={who} onInput={(e) => setWho(e.currentTarget.value)} />
          </div>
          <div>
            <label for="member-role">Role</label>
            <select id="member-role" value={roleId} onChange={(e) => setRoleId(e.currentTarget.value)}>
              <option value="">developer</option>
              {roles.roles.map((r: any) => <option key={r.id} value={r.id}>{r.name}</option>)}
            </select>
          </div>
          <div><button type="submit" disabled={busy}>Add member</button></div>
        </form>
      )}
      <Err error={error} />
    </section>
  );
}

type Run = (fn: () => Promise<unknown>) => Promise<void>;

function Settings({ project, onChange }: { project: any; onChange: () => void }) {
  const [name, setName] = useState(project.name);
  const [description, setDescription] = useState(project.description);
  const [defaultBranch, setDefaultBranch] = useState(project.defaultBranch ?? "");
  const [token, setToken] = useState("");
  const [run, busy, error] = useAction();
  const [saved, setSaved] = useState<string | null>(null);
  // Budgets and agent credentials (CONTRACT §9); approvals and webhooks (§10): shown when the server has them.
  const { data: budget, reload: reloadBudget } = useQuery(
    () => optional<any>(`query B($id: ID!) { project(id: $id) { monthlyBudgetUsd monthCostUsd hasAgentCredential } }`, { id: project.id }),
    [project.id],
  );
  const { data: approvals, reload: reloadApprovals } = useQuery(
    () =>
      optional<any>(
        `query X($id: ID!) { project(id: $id) { agentPermissionMode approverRole { id name } webhooks { id url events } } roles(scope: PROJECT) { id name } }`,
        { id: project.id },
      ),
    [project.id],
  );
  const done = (what: string) => {
    setSaved(what);
    reloadBudget();
    reloadApprovals();
    onChange();
  };
  const save = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await gql(`mutation U($id: ID!, $i: UpdateProjectInput!) { updateProject(id: $id, input: $i) { id } }`, {
        id: project.id,
        i: { name, description, defaultBranch: defaultBranch || null },
      });
      done("Settings saved");
    });
  };
  const saveCredential = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const input = token.startsWith("-----BEGIN") ? { sshPrivateKey: token } : { token };
      await gql(`mutation S($p: ID!, $i: ProjectCredentialInput!) { setProjectCredential(projectId: $p, input: $i) { hasCredential } }`, { p: project.id, i: input });
      setToken("");
      done("Repository credential saved");
    });
  };
  return (
    <section class="card" aria-labelledby="settings-h">
      <h2 id="settings-h">Settings</h2>
      <form onSubmit={save}>
        <label for="s-name">Name</label>
        <input id="s-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <label for="s-desc">Description</label>
        <input id="s-desc" value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
        <label for="s-branch">Default branch</label>
        <input id="s-branch" value={defaultBranch} onInput={(e) => setDefaultBranch(e.currentTarget.value)} />
        <div><button type="submit" disabled={busy}>Save settings</button></div>
      </form>
      <form onSubmit={saveCredential}>
        <label for="s-token">Repository token or SSH private key (write-only; {project.hasCredential ? "one is set" : "none set"})</label>
        <input id="s-token" type="password" autocomplete="off" value={token} onInput={(e) => setToken(e.currentTarget.value)} />
        <div><button type="submit" disabled={busy || !token}>Save repository credential</button></div>
      </form>
      {budget && <BudgetSettings project={project} x={budget.project} run={run} busy={busy} done={done} />}
      {approvals && <ApprovalSettings project={project} extra={approvals} run={run} busy={busy} done={done} />}
      {saved && <p class="ok" role="status">{saved}</p>}
      <Err error={error} />
    </section>
  );
}

function BudgetSettings({ project, x, run, busy, done }: { project: any; x: any; run: Run; busy: boolean; done: (what: string) => void }) {
  const [budget, setBudget] = useState(x.monthlyBudgetUsd == null ? "" : String(x.monthlyBudgetUsd));
  const [apiKey, setApiKey] = useState("");
  const save = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await gql(`mutation U($id: ID!, $i: UpdateProjectInput!) { updateProject(id: $id, input: $i) { id } }`, {
        id: project.id,
        i: { monthlyBudgetUsd: budget === "" ? null : Number(budget) },
      });
      done("Budget saved");
    });
  };
  const saveKey = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await gql(`mutation K($p: ID!, $i: AgentCredentialInput!) { setProjectAgentCredential(projectId: $p, input: $i) { hasAgentCredential } }`, {
        p: project.id, i: { provider: "anthropic", apiKey },
      });
      setApiKey("");
      done("Agent API key saved");
    });
  };
  return (
    <>
      <h2>Agent budget and key</h2>
      <form onSubmit={save}>
        <label for="s-budget">Monthly budget in USD (empty: none)</label>
        <p class="muted" data-testid="month-cost">This month: {money(x.monthCostUsd)}{x.monthlyBudgetUsd != null && ` of ${money(x.monthlyBudgetUsd)}`}</p>
        <input id="s-budget" type="number" min="0" step="0.01" value={budget} onInput={(e) => setBudget(e.currentTarget.value)} />
        <div><button type="submit" disabled={busy}>Save budget</button></div>
      </form>
      <form onSubmit={saveKey}>
        <label for="s-apikey">Project Anthropic API key (write-only; {x.hasAgentCredential ? "one is set" : "none set"})</label>
        <input id="s-apikey" type="password" autocomplete="off" value={apiKey} onInput={(e) => setApiKey(e.currentTarget.value)} />
        <div><button type="submit" disabled={busy || !apiKey}>Save API key</button></div>
      </form>
    </>
  );
}

function ApprovalSettings({ project, extra, run, busy, done }: { project: any; extra: any; run: Run; busy: boolean; done: (what: string) => void }) {
  const x = extra.project;
  const [mode, setMode] = useState(x.agentPermissionMode ?? "DEFAULT");
  const [approver, setApprover] = useState(x.approverRole?.id ?? "");
  const [hookUrl, setHookUrl] = useState("");
  const [hookSecret, setHookSecret] = useState("");
  const save = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await gql(`mutation U($id: ID!, $i: UpdateProjectInput!) { updateProject(id: $id, input: $i) { id } }`, {
        id: project.id,
        i: { agentPermissionMode: mode, approverRoleId: approver || null },
      });
      done("Approval settings saved");
    });
  };
  const addHook = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await gql(`mutation W($p: ID!, $i: AddProjectWebhookInput!) { addProjectWebhook(projectId: $p, input: $i) { id } }`, {
        p: project.id, i: { url: hookUrl, events: ["TASK_FINISHED", "APPROVAL_REQUESTED"], secret: hookSecret },
      });
      setHookUrl("");
      setHookSecret("");
      done("Webhook added");
    });
  };
  const removeHook = (id: string) =>
    run(async () => {
      await gql(`mutation W($id: ID!) { removeProjectWebhook(id: $id) }`, { id });
      done("Webhook removed");
    });
  return (
    <>
      <form onSubmit={save}>
        <h2>Tool approvals</h2>
        <label for="s-mode">Agent permission mode</label>
        <select id="s-mode" value={mode} onChange={(e) => setMode(e.currentTarget.value)}>
          {["DEFAULT", "ACCEPT_EDITS", "PLAN", "BYPASS"].map((m) => <option key={m}>{m}</option>)}
        </select>
        <label for="s-approver">Who approves tool calls (at least)</label>
        <select id="s-approver" value={approver} onChange={(e) => setApprover(e.currentTarget.value)}>
          {extra.roles.map((r: any) => <option key={r.id} value={r.id}>{r.name}</option>)}
        </select>
        <div><button type="submit" disabled={busy}>Save approval settings</button></div>
      </form>
      <h2>Webhooks</h2>
      <ul>
        {(x.webhooks ?? []).map((w: any) => (
          <li key={w.id}>{w.url} <span class="muted">{w.events.join(", ")}</span> <button class="secondary" onClick={() => void removeHook(w.id)}>Remove</button></li>
        ))}
      </ul>
      <form onSubmit={addHook}>
        <label for="s-hook">Webhook URL</label>
        <input id="s-hook" type="url" value={hookUrl} onInput={(e) => setHookUrl(e.currentTarget.value)} />
        <label for="s-hooksecret">Webhook secret (write-only)</label>
        <input id="s-hooksecret" type="password" autocomplete="off" value={hookSecret} onInput={(e) => setHookSecret(e.currentTarget.value)} />
        <div><button type="submit" disabled={busy || !hookUrl || !hookSecret}>Add webhook</button></div>
      </form>
    </>
  );
}

// ---------------------------------------------------------------- task

const TASK_FULL = `id prompt status exitCode error costUsd createdAt startedAt finishedAt branch baseRef headCommit pushedAt mergedAt parentId
  createdBy { id name email } project { id name viewerRole { name permissions } }`;

function Task({ id }: { id: string }) {
  const { data, error, reload, set } = useQuery(() => gql(`query T($id: ID!) { task(id: $id) { ${TASK_FULL} } }`, { id }), [id]);
  useEffect(
    () =>
      subscribe<{ taskUpdates: any }>(`subscription U($id: ID!) { taskUpdates(taskId: $id) { ${TASK_FULL} } }`, { id }, {
        next: ({ taskUpdates }) => set({ task: taskUpdates }),
      }),
    [id],
  );
  // Status changes sent while the socket was away are read again; so is the end of the log.
  useEffect(() => onReconnect(reload), [id]);
  if (error) return <main><Err error={error} /></main>;
  if (!data) return <main><p>Loading…</p></main>;
  const t = data.task;
  const perms = projectPerms(t.project);
  const mine = t.createdBy?.id === currentViewer()?.id;
  const finished = FINISHED.has(t.status);
  const mayCancel = perms.perms.has("task:cancel_any") || (mine && perms.perms.has("task:cancel_own"));
  const mayMerge = perms.perms.has("project:update");
  const mayPush = mayMerge || (mine && perms.perms.has("task:create"));
  return (
    <main>
      <p><a href="#/">Projects</a> / <a href={`#/p/${t.project.id}`}>{t.project.name}</a> /</p>
      <h1>Task</h1>
      <div class="card">
        <pre class="block">{t.prompt}</pre>
        <p class="row">
          <Status status={t.status} /> <span>cost <strong data-testid="task-cost">{money(t.costUsd)}</strong></span>
          <span>branch <code>{t.branch ?? "—"}</code></span>
          {t.mergedAt && <span class="ok">merged {when(t.mergedAt)}</span>}
          {t.pushedAt && <span>pushed {when(t.pushedAt)}</span>}
        </p>
        {t.error && <p class="error">{t.error}</p>}
        <p class="muted">by {t.createdBy?.name || t.createdBy?.email} · started {when(t.startedAt)} · finished {when(t.finishedAt)}
          {t.parentId && <> · follows up <a href={`#/t/${t.parentId}`}>an earlier task</a></>}</p>
        <TaskActions task={t} finished={finished} mayCancel={mayCancel} mayPush={mayPush} mayMerge={mayMerge} onChange={reload} />
      </div>
      <Approvals taskId={t.id} projectId={t.project.id} status={t.status} admin={perms.perms.has("user:manage")} />
      <Log taskId={t.id} onDone={reload} />
      {finished && <Changes taskId={t.id} head={t.headCommit} />}
      {finished && perms.perms.has("task:create") && <FollowUp taskId={t.id} />}
    </main>
  );
}

function TaskActions({ task, finished, mayCancel, mayPush, mayMerge, onChange }: { task: any; finished: boolean; mayCancel: boolean; mayPush: boolean; mayMerge: boolean; onChange: () => void }) {
  const [run, busy, error] = useAction();
  const [strategy, setStrategy] = useState("MERGE");
  const act = (query: string, variables: Record<string, unknown>) => run(async () => (await gql(query, variables), onChange()));
  return (
    <div>
      <div class="row">
        {!finished && mayCancel && <button class="danger" disabled={busy} onClick={() => void act(`mutation C($id: ID!) { cancelTask(id: $id) { id } }`, { id: task.id })}>Cancel task</button>}
        {finished && task.branch && mayPush && <button class="secondary" disabled={busy} onClick={() => void act(`mutation P($id: ID!) { pushTask(id: $id) { id } }`, { id: task.id })}>Push branch</button>}
        {finished && task.branch && mayMerge && !task.mergedAt && (
          <>
            <label class="sr-only" for="strategy">Merge strategy</label>
            <select id="strategy" style={{ width: "auto" }} value={strategy} onChange={(e) => setStrategy(e.currentTarget.value)}>
              <option>MERGE</option><option>SQUASH</option><option>REBASE</option>
            </select>
            <button disabled={busy} onClick={() => void act(`mutation M($id: ID!, $s: MergeStrategy!) { mergeTask(id: $id, input: {strategy: $s}) { id } }`, { id: task.id, s: strategy })}>Merge</button>
          </>
        )}
      </div>
      <Err error={error} />
    </div>
  );
}

function Log({ taskId, onDone }: { taskId: string; onDone: () => void }) {
  const { lines, done, error } = useTaskLog(taskId);
  useEffect(() => {
    if (done) onDone();
  }, [done]);
  return (
    <section class="card" aria-labelledby="log-h">
      <h2 id="log-h">Log {done ? <span class="muted">(complete)</span> : <span class="muted">(live)</span>}</h2>
      <div class="log" role="log" aria-live="polite" data-testid="log">
        {lines.map((l) => <Line key={l.seq} line={l} />)}
        {lines.length === 0 && <p class="muted">No output yet.</p>}
      </div>
      <Err error={error} />
    </section>
  );
}

function Changes({ taskId, head }: { taskId: string; head: string | null }) {
  const { data, error } = useQuery(
    () => gql(`query D($id: ID!) { task(id: $id) { commits { sha message } changes { filesChanged additions deletions truncated files { path oldPath status additions deletions binary patch } } } }`, { id: taskId }),
    [taskId, head],
  );
  if (error) return <section class="card"><Err error={error} /></section>;
  const c = data?.task.changes;
  return (
    <section class="card" aria-labelledby="changes-h">
      <h2 id="changes-h">Changes</h2>
      {!c ? (
        <p class="muted">No changes.</p>
      ) : (
        <>
          <p>{c.filesChanged} file(s), <span class="ok">+{c.additions}</span> <span class="error">−{c.deletions}</span>{c.truncated && " (cut)"}</p>
          {c.files.map((f: any) => (
            <details key={f.path} open class="file" data-path={f.path}>
              <summary><code>{f.path}</code> <span class="muted">{f.status} +{f.additions} −{f.deletions}</span></summary>
              {f.binary ? <p class="muted">Binary file</p> : f.patch ? (
                <div class="diff" dangerouslySetInnerHTML={{ __html: diffHtml(f.patch, { drawFileList: false, outputFormat: "line-by-line", matching: "lines" }) }} />
              ) : <p class="muted">No patch</p>}
            </details>
          ))}
        </>
      )}
    </section>
  );
}

function FollowUp({ taskId }: { taskId: string }) {
  const [prompt, setPrompt] = useState("");
  const [run, busy, error] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const r = await gql(`mutation F($id: ID!, $p: String!) { followUpTask(id: $id, prompt: $p) { id } }`, { id: taskId, p: prompt });
      go(`t/${r.followUpTask.id}`);
    });
  };
  return (
    <form class="card" onSubmit={submit}>
      <h2>Follow up</h2>
      <label for="followup">Prompt (continues this conversation on the same branch)</label>
      <textarea id="followup" required value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} />
      <div><button type="submit" disabled={busy}>Send follow-up</button></div>
      <Err error={error} />
    </form>
  );
}

// ---------------------------------------------------------------- approvals (CONTRACT §10)

const APPROVAL = "id toolName input status requestedAt decidedAt reason decidedBy { name email } task { id prompt project { id name approverRole { name } viewerRole { name } } }";

/** Pending approvals: of one task, or (taskId null) of every project the viewer sees. Null: not on this server. */
function useApprovals(taskId: string | null) {
  return useQuery(async () => {
    if (taskId) {
      const r = await optional<any>(`query A($id: ID!) { task(id: $id) { approvals { ${APPROVAL} } } }`, { id: taskId });
      return r ? r.task.approvals : null;
    }
    const projects = await gql(`{ projects(first: 100) { edges { node { id } } } }`);
    const ids: string[] = projects.projects.edges.map((e: any) => e.node.id);
    const pending = await Promise.all(
      ids.map((id) =>
        optional<any>(`query P($p: ID!) { approvalRequests(projectId: $p, status: PENDING, first: 100) { edges { node { ${APPROVAL} } } } }`, { p: id }),
      ),
    );
    if (ids.length && pending.every((r) => r === null)) return null;
    return pending.flatMap((r) => (r ? r.approvalRequests.edges.map((e: any) => e.node) : []));
  }, [taskId]);
}

function Decide({ approval, onDone }: { approval: any; onDone: () => void }) {
  const [reason, setReason] = useState("");
  const [remember, setRemember] = useState(false);
  const [run, busy, error] = useAction();
  const decide = (allow: boolean) =>
    run(async () => {
      await gql(`mutation D($id: ID!, $i: DecideApprovalInput!) { decideApproval(id: $id, input: $i) { id status } }`, {
        id: approval.id, i: { allow, reason: reason || null, remember },
      });
      onDone();
    });
  return (
    <div class="row">
      <label class="sr-only" for={`reason-${approval.id}`}>Reason</label>
      <input id={`reason-${approval.id}`} placeholder="reason (optional)" style={{ maxWidth: "16rem" }} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
      <label><input type="checkbox" style={{ width: "auto" }} checked={remember} onChange={(e) => setRemember(e.currentTarget.checked)} /> remember for this task</label>
      <button disabled={busy} onClick={() => void decide(true)}>Allow</button>
      <button class="danger" disabled={busy} onClick={() => void decide(false)}>Deny</button>
      <Err error={error} />
    </div>
  );
}

function mayDecide(a: any, admin: boolean) {
  if (admin) return true;
  const need = ROLE_RANK[a.task?.project?.approverRole?.name ?? "maintainer"] ?? 3;
  return (ROLE_RANK[a.task?.project?.viewerRole?.name ?? ""] ?? 0) >= need;
}

function ApprovalList({ items, admin, onDone }: { items: any[]; admin: boolean; onDone: () => void }) {
  return (
    <ul>
      {items.map((a) => (
        <li key={a.id} data-approval={a.id}>
          <details open>
            <summary><strong>{a.toolName}</strong> <span class={`status ${a.status}`}>{a.status}</span> <span class="muted">{when(a.requestedAt)}</span>
              {a.task && <> · <a href={`#/t/${a.task.id}`}>{a.task.project?.name}: {a.task.prompt.slice(0, 60)}</a></>}</summary>
            <pre>{JSON.stringify(a.input, null, 2)}</pre>
          </details>
          {a.status === "PENDING" && mayDecide(a, admin) && <Decide approval={a} onDone={onDone} />}
          {a.status !== "PENDING" && <p class="muted">{a.status} by {a.decidedBy?.name || a.decidedBy?.email || "the server"} {a.reason}</p>}
        </li>
      ))}
    </ul>
  );
}

function Approvals({ taskId, projectId, status, admin }: { taskId: string; projectId: string; status: string; admin: boolean }) {
  const { data, reload } = useApprovals(taskId);
  // Live from the project's approvalRequests subscription; every few seconds while the task runs, should the
  // server not have it.
  const [live, setLive] = useState(true);
  useEffect(
    () =>
      subscribe(`subscription A($p: ID!) { approvalRequests(projectId: $p) { id } }`, { p: projectId }, {
        next: () => reload(),
        error: () => setLive(false),
      }),
    [projectId],
  );
  useEffect(reload, [status]);
  const supported = data !== null; // null: this server has no tool approvals
  useEffect(() => {
    if (live || !supported || FINISHED.has(status)) return;
    const t = window.setInterval(reload, 3000);
    return () => window.clearInterval(t);
  }, [live, supported, status]);
  if (!data || data.length === 0) return null;
  return (
    <section class="card" aria-labelledby="approvals-h">
      <h2 id="approvals-h">Tool approvals</h2>
      <ApprovalList items={data} admin={admin} onDone={reload} />
    </section>
  );
}

function Inbox() {
  const { data, error, reload } = useApprovals(null);
  const supported = data !== null;
  useEffect(() => {
    if (!supported) return;
    const t = window.setInterval(reload, 5000);
    return () => window.clearInterval(t);
  }, [supported]);
  const admin = can("user:manage");
  return (
    <main>
      <h1>Approvals</h1>
      <div class="card">
        <Err error={error} />
        {data === null ? <p class="muted">This server has no tool approvals.</p> : data.length === 0 ? <p class="muted">Nothing waits for a decision.</p> : <ApprovalList items={data} admin={admin} onDone={reload} />}
      </div>
    </main>
  );
}

// ---------------------------------------------------------------- sessions

function Sessions() {
  const { data, error, reload } = useQuery(() => gql(`{ mySessions { id createdAt lastSeenAt ip userAgent current } }`), []);
  const [run, busy, actionError] = useAction();
  const [apiKey, setApiKey] = useState("");
  const [saved, setSaved] = useState<string | null>(null);
  const { data: me } = useQuery(() => optional<any>(`{ viewer { hasAgentCredential } }`), [saved]);
  return (
    <main>
      <h1>My sessions</h1>
      <div class="card">
        <Err error={error} />
        <table>
          <thead><tr><th>Signed in</th><th>Last seen</th><th class="opt">From</th><th><span class="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {data?.mySessions.map((s: any) => (
              <tr key={s.id} data-session={s.id}>
                <td>{when(s.createdAt)} {s.current && <strong>(this one)</strong>}</td>
                <td>{when(s.lastSeenAt)}</td>
                <td class="opt">{s.ip} <span class="muted">{s.userAgent}</span></td>
                <td>{!s.current && <button class="secondary" disabled={busy} onClick={() => void run(async () => (await gql(`mutation R($id: ID!) { revokeSession(id: $id) }`, { id: s.id }), reload()))}>Revoke</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <button class="secondary" disabled={busy} onClick={() => void run(async () => (await gql(`mutation { revokeAllSessions }`), reload()))}>Sign out everywhere else</button>
        <Err error={actionError} />
      </div>
      {me && (
        <form class="card" onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            await gql(`mutation K($i: AgentCredentialInput!) { setAgentCredential(input: $i) { hasAgentCredential } }`, { i: { provider: "anthropic", apiKey } });
            setApiKey("");
            setSaved("API key saved");
          });
        }}>
          <h2>My agent API key</h2>
          <label for="my-apikey">Anthropic API key (write-only; {me.viewer.hasAgentCredential ? "one is set" : "none set"})</label>
          <input id="my-apikey" type="password" autocomplete="off" value={apiKey} onInput={(e) => setApiKey(e.currentTarget.value)} />
          <div><button type="submit" disabled={busy || !apiKey}>Save API key</button></div>
          {saved && <p class="ok" role="status">{saved}</p>}
        </form>
      )}
    </main>
  );
}

// ---------------------------------------------------------------- shell

function App() {
  const [viewer, setViewer] = useState<Viewer | null>(currentViewer());
  const [ready, setReady] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const route = useRoute();
  useEffect(() => {
    const off = onViewer(setViewer);
    resume().then(setNotice, (e) => setNotice(message(e))).finally(() => setReady(true));
    return () => void off();
  }, []);
  if (!ready) return <main><p>Loading…</p></main>;
  return (
    <>
      <header class="top">
        <a class="brand" href="#/">AICode Manager</a>
        {viewer && (
          <nav aria-label="Main" class="row">
            <a href="#/">Projects</a>
            <a href="#/approvals">Approvals</a>
            <a href="#/sessions">Sessions</a>
            <a href="/graphql">GraphiQL</a>
            <span class="muted">{viewer.email}</span>
            <button class="secondary" onClick={() => void logout()}>Sign out</button>
          </nav>
        )}
      </header>
      {!viewer ? <SignIn notice={notice} /> : <Page route={route} />}
    </>
  );
}

function Page({ route }: { route: string[] }) {
  const [page, arg] = route;
  if (page === "p" && arg) return <Project key={arg} id={arg} />;
  if (page === "t" && arg) return <Task key={arg} id={arg} />;
  if (page === "approvals") return <Inbox />;
  if (page === "sessions") return <Sessions />;
  return <Projects />;
}

render(<App />, document.getElementById("app")!);
