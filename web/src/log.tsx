// A task's log, rendered readably: assistant text, tool calls folded with their input, tool results, errors,
// and the result with its cost. Lines are keyed by seq; the stream drops what it already has and fills gaps.
import { useEffect, useRef, useState } from "preact/hooks";
import { gql, subscribe } from "./api";

export interface LogLine {
  seq: number;
  at: string;
  stream: string;
  kind: string;
  text: string | null;
  data: any;
}

const LINE = "seq at stream kind text data";

/** Lines of a task from seq 1, live, each once and in order, across reconnects and reloads. */
export function useTaskLog(taskId: string): { lines: LogLine[]; done: boolean; error: string | null } {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [done, setDone] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const last = useRef(0);
  useEffect(() => {
    last.current = 0;
    setLines([]);
    setDone(false);
    let stopped = false;
    let filling: Promise<void> | null = null;
    const add = (batch: LogLine[]) => {
      const fresh = batch.filter((l) => l.seq > last.current).sort((a, b) => a.seq - b.seq);
      const accepted: LogLine[] = [];
      for (const l of fresh) {
        if (l.seq !== last.current + 1) break;
        accepted.push(l);
        last.current = l.seq;
      }
      if (accepted.length) setLines((prev) => [...prev, ...accepted]);
      return accepted.length === fresh.length;
    };
    // A line past a hole (e.g. after a reconnect): read the hole from Task.logs, then the line.
    const fill = async (upTo: number) => {
      for (let i = 0; i < 1000 && last.current < upTo && !stopped; i++) {
        const data = await gql(`query Fill($id: ID!, $after: Int!) { task(id: $id) { logs(afterSeq: $after, first: 100) { ${LINE} } } }`, {
          id: taskId,
          after: last.current,
        });
        const got: LogLine[] = data.task.logs;
        if (!got.length) break;
        add(got);
      }
    };
    const stop = subscribe<{ taskLogs: LogLine }>(
      `subscription Log($id: ID!, $after: Int!) { taskLogs(taskId: $id, afterSeq: $after) { ${LINE} } }`,
      { id: taskId, after: 0 },
      {
        next: ({ taskLogs }) => {
          if (!add([taskLogs])) {
            filling = (filling ?? Promise.resolve()).then(() => fill(taskLogs.seq)).then(() => void add([taskLogs]));
          }
        },
        error: (e: any) => setError(e?.message ?? "The log stream failed"),
        complete: () => setDone(true),
      },
    );
    return () => {
      stopped = true;
      stop();
    };
  }, [taskId]);
  return { lines, done, error };
}

function json(value: unknown) {
  return JSON.stringify(value, null, 2);
}

function Block({ block }: { block: any }) {
  if (block.type === "text") return <p>{block.text}</p>;
  if (block.type === "tool_use")
    return (
      <details class="tool">
        <summary>
          Tool call: <strong>{block.name}</strong> <span class="muted">{summary(block.input)}</span>
        </summary>
        <pre>{json(block.input)}</pre>
      </details>
    );
  if (block.type === "tool_result") {
    const content = Array.isArray(block.content)
      ? block.content.map((c: any) => c.text ?? json(c)).join("\n")
      : String(block.content ?? "");
    return (
      <details class={block.is_error ? "tool error" : "tool"}>
        <summary>{block.is_error ? "Tool error" : "Tool result"}</summary>
        <pre>{content}</pre>
      </details>
    );
  }
  if (block.type === "thinking") return <p class="muted">{block.thinking}</p>;
  return <pre>{json(block)}</pre>;
}

function summary(input: any): string {
  if (!input || typeof input !== "object") return "";
  const first = Object.values(input).find((v) => typeof v === "string") as string | undefined;
  return first ? (first.length > 80 ? first.slice(0, 80) + "…" : first) : "";
}

export function Line({ line }: { line: LogLine }) {
  const d = line.data;
  let cls = "line";
  let body;
  if (line.stream === "stderr") {
    cls += " err";
    body = <pre>{line.text}</pre>;
  } else if (line.stream === "system") {
    body = <em>{line.text}</em>;
  } else if (d && line.kind === "assistant") {
    cls += " assistant";
    body = (d.message?.content ?? []).map((b: any, i: number) => <Block key={i} block={b} />);
  } else if (d && line.kind === "user") {
    body = (d.message?.content ?? []).map((b: any, i: number) => <Block key={i} block={b} />);
  } else if (d && line.kind === "result") {
    cls += d.is_error ? " err result" : " result";
    const cost = d.total_cost_usd ?? d.cost_usd;
    body = (
      <div>
        <div>{d.is_error ? "Failed" : "Result"}: {d.result}</div>
        <div class="muted">
          {cost != null ? `cost $${Number(cost).toFixed(4)}` : ""} {d.num_turns ? `· ${d.num_turns} turns` : ""}
          {d.duration_ms ? ` · ${(d.duration_ms / 1000).toFixed(1)} s` : ""}
        </div>
      </div>
    );
  } else if (d && line.kind === "system") {
    body = <span class="muted">Session started{d.model ? ` (${d.model})` : ""}</span>;
  } else {
    body = <pre>{line.text}</pre>;
  }
  return (
    <div class={cls} data-seq={line.seq} data-kind={line.kind}>
      <span class="seq" aria-hidden="true">#{line.seq}</span>
      {body}
    </div>
  );
}
