#!/usr/bin/env python3
"""Open-loop multi-tenant load for the router's flow control (tenants, priorities, the
gateway queue and its admission policy): each tenant sends Poisson arrivals (seeded) of
streamed OpenAI completions, and the report gives, per tenant, what was answered and how
fast, and over the run the service each tenant got per window, the service gap as VTC
defines it (Sheng et al., OSDI'24) and Jain's index.

Run it with the venv of scripts/peer-routers.sh (the last line it prints is the bin dir;
it has aiohttp), e.g.

  BIN=$(bash scripts/peer-routers.sh | tail -1)
  $BIN/python scripts/flow-load.py --url http://127.0.0.1:8000 --duration 60 --seed 1 \\
      --out run.json --tenant name=victim,rate=0.5,prompt_tokens=64,max_tokens=16,priority=3 \\
      --tenant name=aggressor,rate=2,prompt_tokens=512,max_tokens=16,retry=honour

--tenant takes comma-separated key=value (repeat the flag for more tenants):
  name                  the tenant (sent as the tenant header, x-tenant-id by default)
  rate                  mean arrivals per second (Poisson, open loop: a late answer does not
                        delay the next arrival)
  prompt_tokens         prompt length in tokens: words drawn at random (seeded) from a list of
                        single-token words, each with a leading space, so prompts are distinct
                        (no response-cache hits) and exactly this long in GPT-2 tokens
  shared_prefix_tokens  the first K of them are one fixed run of words for all of this
                        tenant's requests (a prefix the workers' KV caches can reuse); 0
  max_tokens            completion tokens asked for (sent with ignore_eos, see --no-ignore-eos)
  priority              sent as the priority header (x-priority), 0..3; absent: not sent
  retry                 none | immediate | honour: on 429 or 503 send again at once, or after
                        Retry-After (1 s when absent); at most --max-attempts attempts in all
                        and no attempt after the drain deadline
  weight                the tenant's weight in the fairness figures (service / weight); 1
  key                   sent as Authorization: Bearer KEY (routers with --api-keys)

Definitions (times from the load's start, a monotonic clock):
  TTFT       from the request's FIRST attempt's send (retries and their waits included) to
             the first SSE chunk whose choices carry non-empty text; `ttft_attempt_*` is the
             same from the successful attempt's send. Over successful requests.
  e2e        from the first attempt's send to the end of the stream.
  success    HTTP 200 whose stream ended with [DONE] or a usage chunk (no error event).
  tokens     prompt + completion tokens from the final usage chunk of successful requests.
  service    VTC's weighted tokens, input x 1 + output x 2, divided by the tenant's weight:
             a request's input tokens count at its first text chunk, its output tokens one
             per text chunk at the chunk's time (scaled so that they sum to usage's
             completion_tokens when that is known). Requests cancelled at the end count what
             they had streamed.
  windows    whole --window-long windows of [0, duration) (one window of the whole duration
             when it is shorter); arrivals stop at `duration`, requests still running get
             --drain seconds more and are then cancelled ("unfinished").
  unmet      demand of tenant i at time T: over i's requests sent by T and not ended by T
             (ended: stream done, or a final refusal/error), the input not yet counted as
             served plus 2 x (max_tokens - output tokens counted so far), divided by i's
             weight. A refused request without a retry to come is no longer demand.
  gap        per window: sum over tenants i of min(max_j S_j - S_i, unmet_i(window end)),
             S = the window's service; gap_max and gap_mean over windows.
  Jain       per window, over tenants with unmet demand at the window's end:
             (sum S)^2 / (n sum S^2); jain_mean and jain_min over windows where it is defined
             (at least one such tenant, and some service).
  tokens/s   prompt + completion tokens counted (as for service) in [0, duration) over
             duration; tokens_per_s_all counts every token until the last request ended.
  5xx        attempts answered with a status >= 500 (503 refusals included; five_xx_not_503
             leaves them out).
"""
import argparse
import asyncio
import email.utils
import json
import math
import random
import sys
import time
from collections import Counter

try:
    import aiohttp
except ImportError:
    sys.exit("flow-load.py needs aiohttp: run it with the python of the venv that "
             "scripts/peer-routers.sh prints, or `pip install aiohttp`")

# Common English words that GPT-2's tokenizer encodes as one token each with a leading space
# (checked against a worker: 710 words joined give 710 prompt tokens).
WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death "
    "experience effect use class control care field development role effort rate heart drug "
    "show leader light voice wife police mind price report decision son view relationship "
    "town road arm difference value building action model season society tax director "
    "position player record paper space ground form event official matter center couple site "
    "project activity star table need court oil situation cost industry figure street image "
    "phone data picture practice piece land product doctor wall patient worker news test "
    "movie north love support technology step baby computer type attention film tree source "
    "organization hair window evidence population skin apple river stone cloud garden bridge "
    "forest mountain ocean island valley desert village castle tower harbor station library "
    "museum church temple palace prison hospital factory kitchen bedroom garage basement "
    "mirror carpet pillow blanket candle lamp clock bottle glass plate bowl spoon knife fork "
    "cup kettle oven bread butter cheese milk coffee tea sugar salt pepper honey rice bean "
    "corn wheat potato tomato onion garlic lemon orange banana cherry grape peach pear plum "
    "nut seed flower grass leaf branch root wood metal iron gold silver copper steel plastic "
    "rubber cotton wool silk leather card letter stamp envelope package box bag basket bucket "
    "barrel engine wheel motor pump valve pipe wire cable rope chain hook nail screw bolt "
    "hammer saw drill brush paint ink pen pencil chalk board desk chair bench shelf cabinet "
    "drawer gate fence roof floor ceiling stair path lane highway tunnel canal dam lake pond "
    "stream shore beach coast cliff cave hill peak rock sand soil mud dust snow ice rain "
    "storm wind thunder lightning fog mist frost sun moon planet comet sky horizon dawn dusk "
    "noon midnight summer winter spring autumn weather climate heat cold fire smoke ash flame "
    "spark coal gas fuel energy battery signal radio camera screen keyboard mouse printer "
    "network server browser email message song dance poem novel chapter page title author "
    "editor reader writer artist singer actor pilot driver sailor soldier captain king queen "
    "prince princess knight farmer hunter fisher baker butcher tailor merchant banker lawyer "
    "judge nurse surgeon dentist chemist engineer scientist professor pupil infant uncle aunt "
    "cousin nephew niece brother sister husband bride groom neighbor stranger guest host "
    "enemy ally rival partner horse cow pig sheep goat chicken duck goose turkey rabbit rat "
    "cat dog wolf fox bear lion tiger elephant monkey snake frog fish whale shark dolphin "
    "eagle hawk owl crow bee ant spider fly worm bird insect animal plant bush vine moss "
    "quick slow fast bright dark heavy warm cool hot wet dry soft hard loud quiet rich poor "
    "young old new ancient modern early late happy sad angry calm brave proud humble gentle "
    "rough smooth sharp dull clean dirty empty full open closed strong weak tall short wide "
    "narrow deep shallow thick thin sweet bitter sour fresh stale simple complex clear vague "
    "common rare cheap expensive safe dangerous easy difficult real fake true false public "
    "private local global red blue green yellow purple brown black white gray pink run walk "
    "jump swim climb drive ride sail carry push pull lift drop throw catch hold grab shake "
    "turn spin roll slide fall rise grow shrink build break fix cut cook bake boil fry wash "
    "draw write read speak listen hear watch see look find lose win fail pass move stop start "
    "finish begin close enter leave arrive return travel visit stay wait sleep wake dream "
    "think know learn teach help serve sell buy pay spend save borrow lend give take send "
    "receive bring keep share join meet follow lead guide explain describe answer ask call "
    "shout whisper sing laugh cry smile frown "
).split()

W_IN, W_OUT = 1, 2  # VTC's weights of input and output tokens
RETRY_STATUSES = (429, 503)
TENANT_KEYS = {
    "name": str, "rate": float, "prompt_tokens": int, "shared_prefix_tokens": int,
    "max_tokens": int, "priority": int, "retry": str, "weight": float, "key": str,
}


def parse_tenant(spec):
    t = {"name": None, "rate": 1.0, "prompt_tokens": 64, "shared_prefix_tokens": 0,
         "max_tokens": 16, "priority": None, "retry": "none", "weight": 1.0, "key": None}
    for kv in spec.split(","):
        if "=" not in kv:
            raise argparse.ArgumentTypeError(f"{kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        if k not in TENANT_KEYS:
            raise argparse.ArgumentTypeError(f"unknown tenant key {k!r} (known: "
                                             f"{', '.join(TENANT_KEYS)})")
        try:
            t[k] = TENANT_KEYS[k](v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{k}={v!r}: not a {TENANT_KEYS[k].__name__}")
    if not t["name"]:
        raise argparse.ArgumentTypeError(f"{spec!r}: name= is required")
    if t["retry"] not in ("none", "immediate", "honour"):
        raise argparse.ArgumentTypeError(f"retry={t['retry']}: none, immediate or honour")
    if t["rate"] < 0 or t["weight"] <= 0 or t["prompt_tokens"] < 1 or t["max_tokens"] < 1:
        raise argparse.ArgumentTypeError(f"{spec!r}: rate >= 0, weight > 0, "
                                         "prompt_tokens >= 1, max_tokens >= 1")
    if not 0 <= t["shared_prefix_tokens"] <= t["prompt_tokens"]:
        raise argparse.ArgumentTypeError(f"{spec!r}: shared_prefix_tokens must be within "
                                         "prompt_tokens")
    return t


def pct(xs, p):
    """Nearest-rank percentile; None for no values."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))]


def retry_after_s(value):
    """Retry-After in seconds (delta-seconds or an HTTP date); None when absent or bad."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Req:
    """One request and every attempt at it; times are seconds from the load's start."""
    __slots__ = ("tenant", "idx", "due", "sent", "attempts", "ok_send", "first", "chunks",
                 "end", "outcome", "error", "prompt_tokens", "completion_tokens", "done_marker",
                 "input", "max_tokens")

    def __init__(self, tenant, idx, due, input_tokens, max_tokens):
        self.tenant, self.idx, self.due = tenant, idx, due
        self.sent = self.ok_send = self.first = self.end = None
        self.attempts, self.chunks = [], []
        self.outcome = self.error = None
        self.prompt_tokens = self.completion_tokens = None
        self.done_marker = False
        self.input, self.max_tokens = input_tokens, max_tokens

    def served_input(self):
        return self.prompt_tokens if self.prompt_tokens is not None else self.input

    def token_events(self):
        """(time, input tokens, output tokens) as the service is counted."""
        ev = []
        at = self.first if self.first is not None else (self.end if self.outcome == "200"
                                                        else None)
        if at is not None:
            ev.append((at, self.served_input(), 0.0))
        n = len(self.chunks)
        if self.completion_tokens is not None:
            if n:
                per = self.completion_tokens / n
                ev.extend((c, 0, per) for c in self.chunks)
            elif self.completion_tokens and self.end is not None:
                ev.append((self.end, 0, float(self.completion_tokens)))
        else:
            ev.extend((c, 0, 1.0) for c in self.chunks)
        return ev


class Load:
    def __init__(self, a):
        self.a = a
        self.url = a.url.rstrip("/") + "/v1/completions"
        self.reqs = []
        self.tasks = set()
        self.lags = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.t0 = None

    def now(self):
        return time.monotonic() - self.t0

    async def request(self, session, t, body, req):
        a = self.a
        hdrs = {a.tenant_header: t["name"]}
        if t["priority"] is not None:
            hdrs[a.priority_header] = str(t["priority"])
        if t["key"]:
            hdrs["Authorization"] = f"Bearer {t['key']}"
        deadline = a.duration + a.drain
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            while True:
                at = self.now()
                if req.sent is None:
                    req.sent = at
                att = {"t": round(at, 4), "status": None}
                req.attempts.append(att)
                try:
                    async with session.post(self.url, json=body, headers=hdrs,
                                            trace_request_ctx=att) as r:
                        att["headers_in"] = round(self.now(), 4)
                        att["status"] = r.status
                        if r.status != 200:
                            raw = await r.read()
                            self.note_refusal(att, r, raw)
                            wait = None
                            if (r.status in RETRY_STATUSES and t["retry"] != "none"
                                    and len(req.attempts) < a.max_attempts):
                                wait = 0.0
                                if t["retry"] == "honour":
                                    ra = att.get("retry_after")
                                    wait = 1.0 if ra is None else ra
                            if wait is not None and self.now() + wait < deadline:
                                if wait > 0:
                                    await asyncio.sleep(wait)
                                continue
                            req.outcome = str(r.status)
                            req.end = self.now()
                            return
                        req.ok_send = at
                        await self.stream(r, req)
                        return
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                    if att["status"] is None:
                        att["status"] = "conn"
                        req.outcome = "conn"
                    else:
                        req.outcome = "broken_stream"
                    att["error"] = f"{type(e).__name__}: {e}"[:300]
                    req.error = att["error"]
                    req.end = self.now()
                    return
        except asyncio.CancelledError:
            req.outcome = "unfinished"
            req.end = self.now()
            raise
        finally:
            self.in_flight -= 1

    @staticmethod
    def note_refusal(att, r, raw):
        att["retry_after"] = retry_after_s(r.headers.get("Retry-After"))
        att["retry_after_header"] = r.headers.get("Retry-After")
        try:
            err = json.loads(raw)["error"]
            att["code"] = err.get("code")
            att["type"] = err.get("type")
            att["message"] = (err.get("message") or "")[:200]
            att["body_ok"] = isinstance(err, dict) and all(
                k in err for k in ("message", "type", "param", "code"))
        except (ValueError, KeyError, TypeError, AttributeError):
            att["body_ok"] = False
            att["message"] = raw[:200].decode("utf-8", "replace")

    async def stream(self, r, req):
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line, buf = buf[:i].rstrip(b"\r"), buf[i + 1:]
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    req.done_marker = True
                    continue
                try:
                    d = json.loads(payload)
                except ValueError:
                    continue
                if d.get("error"):
                    req.outcome = "stream_error"
                    req.error = json.dumps(d["error"])[:300]
                    req.end = self.now()
                    return
                for c in d.get("choices") or ():
                    if c.get("text"):
                        t = self.now()
                        req.chunks.append(t)
                        if req.first is None:
                            req.first = t
                u = d.get("usage")
                if u:
                    req.prompt_tokens = u.get("prompt_tokens")
                    req.completion_tokens = u.get("completion_tokens")
        req.end = self.now()
        ok = req.done_marker or req.completion_tokens is not None
        req.outcome = "200" if ok else "incomplete"

    async def tenant(self, session, t, model):
        a = self.a
        name, n, k = t["name"], t["prompt_tokens"], t["shared_prefix_tokens"]
        rng = random.Random(f"{a.seed}/arrivals/{name}")
        prefix = [random.Random(f"{a.seed}/prefix/{name}").choice(WORDS) for _ in range(k)]
        due = 0.0
        idx = 0
        while t["rate"] > 0:
            due += rng.expovariate(t["rate"])
            if due >= a.duration:
                return
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.lags.append(self.now() - due)
            prng = random.Random(f"{a.seed}/prompt/{name}/{idx}")
            words = prefix + [prng.choice(WORDS) for _ in range(n - k)]
            body = {"model": model, "prompt": "".join(" " + w for w in words),
                    "max_tokens": t["max_tokens"], "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            if a.ignore_eos:
                body["ignore_eos"] = True
            req = Req(name, idx, due, n, t["max_tokens"])
            self.reqs.append(req)
            task = asyncio.create_task(self.request(session, t, body, req))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            idx += 1

    async def model(self, session):
        if self.a.model:
            return self.a.model
        try:
            async with session.get(self.a.url.rstrip("/") + "/v1/models") as r:
                return (await r.json())["data"][0]["id"]
        except Exception:  # noqa: BLE001 - any answer but a model list: a neutral name
            return "default"

    async def run(self):
        a = self.a
        # keepalive below the router's idle timeout (10 s), so a pooled connection is not
        # closed under a request being sent on it.
        conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=5)
        # Each attempt's own times: connection made, request sent, answer's head read.
        trace = aiohttp.TraceConfig()

        def stamp(key):
            async def on(_session, ctx, _params):
                if isinstance(ctx.trace_request_ctx, dict):
                    ctx.trace_request_ctx[key] = round(self.now(), 4)
            return on
        trace.on_connection_create_end.append(stamp("connected"))
        trace.on_connection_reuseconn.append(stamp("reused"))
        trace.on_request_headers_sent.append(stamp("head_sent"))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout,
                                         trace_configs=[trace]) as session:
            model = await self.model(session)
            self.model_name = model
            self.t0 = time.monotonic()
            self.t0_unix = time.time()
            await asyncio.gather(*(self.tenant(session, t, model) for t in a.tenant))
            left = a.duration + a.drain - self.now()
            if self.tasks and left > 0:
                await asyncio.wait(set(self.tasks), timeout=left)
            self.cancelled = len(self.tasks)
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
            self.wall = self.now()


def windows_of(duration, window):
    n = int(duration / window + 1e-9)
    if n == 0:
        return [(0.0, duration)]
    return [(k * window, (k + 1) * window) for k in range(n)]


def unmet_at(r, T):
    """Weighted tokens of request r still owed at time T (0 when not sent or ended)."""
    if r.sent is None or r.sent > T or (r.end is not None and r.end <= T):
        return 0.0
    if r.outcome == "200" and r.end is not None and r.end <= T:
        return 0.0
    inp = 0.0 if (r.first is not None and r.first <= T) else r.served_input()
    out = sum(o for (t, _, o) in r.token_events() if t <= T)
    return W_IN * inp + W_OUT * max(0.0, r.max_tokens - out)


def report(a, load):
    tenants = {t["name"]: t for t in a.tenant}
    reqs = load.reqs
    D = a.duration
    out = {"label": a.label, "t0_unix": getattr(load, "t0_unix", None), "url": a.url, "model": load.model_name,
           "config": {"duration": D, "drain": a.drain, "window": a.window, "seed": a.seed,
                      "max_attempts": a.max_attempts, "ignore_eos": a.ignore_eos,
                      "tenant_header": a.tenant_header, "priority_header": a.priority_header,
                      "tenants": [{k: v for k, v in t.items() if k != "key"} | {
                          "key": "***" if t["key"] else None} for t in a.tenant]},
           "ttft_definition": "first attempt's send -> first SSE chunk with non-empty text "
                              "(ttft_attempt_*: from the successful attempt's send)",
           "tenants": {}}
    events = {n: [] for n in tenants}
    for r in reqs:
        events[r.tenant].extend(r.token_events())
    total_5xx = Counter()
    for name, t in tenants.items():
        rs = [r for r in reqs if r.tenant == name]
        ok = [r for r in rs if r.outcome == "200"]
        statuses = Counter(str(at["status"]) for r in rs for at in r.attempts)
        # Answers other than 200; an attempt cancelled before its answer (status None,
        # counted as `unfinished`) or that failed to connect (`conn`) is not a refusal.
        refusals = Counter(f"{at['status']} {at.get('code')}" for r in rs for at in r.attempts
                           if isinstance(at["status"], int) and at["status"] != 200)
        ras = [at["retry_after"] for r in rs for at in r.attempts
               if at["status"] in RETRY_STATUSES and at.get("retry_after") is not None]
        no_ra = sum(1 for r in rs for at in r.attempts
                    if at["status"] in RETRY_STATUSES and at.get("retry_after") is None)
        bad_body = sum(1 for r in rs for at in r.attempts
                       if isinstance(at["status"], int) and at["status"] >= 400
                       and not at.get("body_ok"))
        for r in rs:
            for at in r.attempts:
                if isinstance(at["status"], int) and at["status"] >= 500:
                    total_5xx[str(at["status"])] += 1
        attempts = sum(len(r.attempts) for r in rs)
        ttft = [r.first - r.sent for r in ok if r.first is not None]
        ttft_att = [r.first - r.ok_send for r in ok if r.first is not None]
        e2e = [r.end - r.sent for r in ok]
        pt = sum(r.prompt_tokens or 0 for r in ok)
        ct = sum(r.completion_tokens or 0 for r in ok)
        errors = Counter(r.error.split(":")[0] for r in rs if r.error)
        out["tenants"][name] = {
            "sent": len(rs), "successes": len(ok),
            "outcomes": dict(Counter(r.outcome for r in rs)),
            "attempt_statuses": dict(statuses),
            "refusals": dict(refusals),
            "errors": dict(errors),
            "attempts": attempts,
            "attempts_per_success": attempts / len(ok) if ok else None,
            "retry_after_s": {"min": min(ras), "p50": pct(ras, 50), "max": max(ras)}
            if ras else None,
            "refusals_without_retry_after": no_ra,
            "error_bodies_not_openai": bad_body,
            "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
            "ttft_max": max(ttft) if ttft else None,
            "ttft_attempt_p50": pct(ttft_att, 50), "ttft_attempt_p99": pct(ttft_att, 99),
            "e2e_p50": pct(e2e, 50), "e2e_p99": pct(e2e, 99),
            "prompt_tokens": pt, "completion_tokens": ct, "tokens": pt + ct,
            "successes_without_usage": sum(1 for r in ok if r.completion_tokens is None),
            "short_completions": sum(1 for r in ok if r.completion_tokens is not None
                                     and r.completion_tokens < r.max_tokens),
            "service": sum(W_IN * i + W_OUT * o for (_, i, o) in events[name]) / t["weight"],
        }
    counted = sum(i + o for ev in events.values() for (t, i, o) in ev if t < D)
    everything = sum(i + o for ev in events.values() for (t, i, o) in ev)
    last = max((r.end for r in reqs if r.end is not None), default=D)
    out["tokens_per_s"] = counted / D
    out["tokens_per_s_all"] = everything / last if last > 0 else None
    out["five_xx"] = sum(total_5xx.values())
    out["five_xx_by_status"] = dict(total_5xx)
    out["five_xx_not_503"] = sum(v for k, v in total_5xx.items() if k != "503")
    out["unfinished"] = sum(1 for r in reqs if r.outcome == "unfinished")
    # Per window: service S (weighted, / weight), unmet demand at its end, gap, Jain.
    wins = []
    for (w0, w1) in windows_of(D, a.window):
        S, U = {}, {}
        for name, t in tenants.items():
            S[name] = sum(W_IN * i + W_OUT * o for (tt, i, o) in events[name]
                          if w0 <= tt < w1) / t["weight"]
            U[name] = sum(unmet_at(r, w1) for r in reqs if r.tenant == name) / t["weight"]
        best = max(S.values()) if S else 0.0
        gap = sum(min(best - S[n], U[n]) for n in tenants)
        back = [n for n in tenants if U[n] > 0]
        xs = [S[n] for n in back]
        sq = sum(x * x for x in xs)
        jain = (sum(xs) ** 2 / (len(xs) * sq)) if xs and sq > 0 else None
        tokens = sum(i + o for ev in events.values() for (tt, i, o) in ev if w0 <= tt < w1)
        wins.append({"start": w0, "end": w1, "service": S, "unmet": U, "gap": gap,
                     "backlogged": back, "jain": jain, "tokens_per_s": tokens / (w1 - w0)})
    out["windows"] = wins
    gaps = [w["gap"] for w in wins]
    jains = [w["jain"] for w in wins if w["jain"] is not None]
    out["gap_max"] = max(gaps) if gaps else None
    out["gap_mean"] = sum(gaps) / len(gaps) if gaps else None
    out["jain_mean"] = sum(jains) / len(jains) if jains else None
    out["jain_min"] = min(jains) if jains else None
    lags = load.lags
    out["client"] = {"arrival_lag_p99_s": pct(lags, 99), "arrival_lag_max_s": max(lags)
                     if lags else None, "max_in_flight": load.max_in_flight,
                     "cancelled_at_end": load.cancelled, "wall_s": load.wall}
    out["requests"] = [{
        "tenant": r.tenant, "idx": r.idx, "due": round(r.due, 4),
        "sent": None if r.sent is None else round(r.sent, 4),
        "ttft": None if r.first is None else round(r.first - r.sent, 4),
        "end": None if r.end is None else round(r.end, 4), "outcome": r.outcome,
        "statuses": [at["status"] for at in r.attempts],
        "attempts": [{k: v for k, v in at.items() if k in
                      ("t", "connected", "reused", "head_sent", "headers_in")} for at in r.attempts],
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "chunks": len(r.chunks)} for r in reqs]
    return out


def f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def table(out):
    rows = [("tenant", "sent", "ok", "statuses (attempts)", "att/ok", "TTFT p50/p90/p99 s",
             "e2e p50/p99 s", "tokens")]
    for n, v in out["tenants"].items():
        st = " ".join(f"{k}:{c}" for k, c in sorted(v["attempt_statuses"].items()))
        oc = {k: c for k, c in v["outcomes"].items() if k != "200"}
        if oc:
            st += " | final " + " ".join(f"{k}:{c}" for k, c in sorted(oc.items()))
        rows.append((n, str(v["sent"]), str(v["successes"]), st,
                     f(v["attempts_per_success"]),
                     f"{f(v['ttft_p50'])}/{f(v['ttft_p90'])}/{f(v['ttft_p99'])}",
                     f"{f(v['e2e_p50'])}/{f(v['e2e_p99'])}", str(v["tokens"])))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    c = out["client"]
    lines.append(
        f"tokens/s {f(out['tokens_per_s'], 1)} (all {f(out['tokens_per_s_all'], 1)}); "
        f"gap max/mean {f(out['gap_max'], 0)}/{f(out['gap_mean'], 0)} over "
        f"{len(out['windows'])} window(s); Jain mean {f(out['jain_mean'], 3)} min "
        f"{f(out['jain_min'], 3)}; 5xx {out['five_xx']} (not 503: {out['five_xx_not_503']}); "
        f"unfinished {out['unfinished']}; arrival lag max {f(c['arrival_lag_max_s'], 3)} s")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the router, e.g. http://127.0.0.1:8000")
    ap.add_argument("--duration", type=float, default=60, help="seconds of arrivals (60)")
    ap.add_argument("--drain", type=float, default=60,
                    help="seconds requests still running get after that; then cancelled (60)")
    ap.add_argument("--window", type=float, default=60, help="fairness window, seconds (60)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--label", default="", help="a name kept in the report")
    ap.add_argument("--tenant", action="append", required=True, type=parse_tenant,
                    help="name=...,rate=...,... (repeatable; keys below)")
    ap.add_argument("--tenant-header", default="x-tenant-id")
    ap.add_argument("--priority-header", default="x-priority")
    ap.add_argument("--max-attempts", type=int, default=20,
                    help="attempts per request at most, with retry= (20)")
    ap.add_argument("--model", help="the body's model (default: the first of /v1/models)")
    ap.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                    help="do not send ignore_eos (completions may then end early)")
    a = ap.parse_args()
    names = [t["name"] for t in a.tenant]
    if len(set(names)) != len(names):
        ap.error("tenant names must differ")
    if a.duration <= 0 or a.window <= 0 or a.drain < 0:
        ap.error("--duration and --window must be > 0, --drain >= 0")
    load = Load(a)
    asyncio.run(load.run())
    out = report(a, load)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    if a.label:
        print(f"== {a.label}")
    print(table(out))


if __name__ == "__main__":
    main()
