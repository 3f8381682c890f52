"""The terminal live view of `make demo`, and the checks behind its exit code.

`LiveView` is fed the JSON records every process writes (``{"who": "server" or
a bot's name, "ev": ..., ...}``) and returns the lines to print: events as they
happen (joins, the cut, the detach and the resume, leaves); `status()` is the
block refreshed every second (ticks held, each bot's data-channel states per
second, loss and echo latency); at the end comes the summary, whose last line is
``players N (M bots), resumed K, closed 1000 N``. No I/O here: the tests feed it
records directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


@dataclass
class LiveView:
    bots: list[str]
    cut_bot: str | None = None
    started: float | None = None
    joined: dict[str, dict[str, Any]] = field(default_factory=dict)  # server's view, by name
    joins: list[str] = field(default_factory=list)  # every join, in order (a resume is none)
    left: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_resumed: list[str] = field(default_factory=list)
    server_detached: list[str] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)  # ticks/s, one per server second
    per_second: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest bot second
    states_rates: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cuts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    resumes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _second: tuple[str, dict[str, Any]] | None = None

    def add(self, record: dict[str, Any]) -> list[str]:
        """Take one record; return the lines to print for it now."""
        who, ev = record.get("who", "?"), record.get("ev")
        t = record.get("t")
        if self.started is None and isinstance(t, (int, float)):
            self.started = t
        stamp = (
            f"[{(t - self.started) if isinstance(t, (int, float)) and self.started else 0:5.1f} s]"
        )
        if who == "server":
            return self._server(ev, record, stamp)
        return self._bot(who, ev, record, stamp)

    def _server(self, ev: Any, r: dict[str, Any], stamp: str) -> list[str]:
        if ev == "listening":
            return [f"{stamp} server listening on {r['url']} (match room {r.get('room')!r})"]
        if ev == "joined":
            self.joined[r["name"]] = r
            self.joins.append(r["name"])
            kind = "bot" if r.get("bot") else "player"
            return [f"{stamp} + {r['name']} joined the match ({kind}, slot {r['slot']})"]
        if ev == "left":
            self.left[r["name"]] = r
            return [
                f"{stamp} - {r['name']} left: {r['code']} {r['reason']!r}, "
                f"score {r['score']}, {r['states_sent']} states sent, {r['inputs']} inputs"
            ]
        if ev == "detached":
            self.server_detached.append(r["name"])
            return [
                f"{stamp} ~ server: {r['name']} detached at step {r['step']!r} "
                "(websocket lost; player and data channel kept)"
            ]
        if ev == "resumed":
            self.server_resumed.append(r["name"])
            return [f"{stamp} ~ server: {r['name']} resumed at step {r['step']!r}"]
        if ev == "chat":
            return [f"{stamp} chat {r['name']}: {r['text']}"]
        if ev == "second":
            self.ticks.append(float(r["ticks"]))
            self._second = (stamp, r)
        return []
        return []

    def _bot(self, who: str, ev: Any, r: dict[str, Any], stamp: str) -> list[str]:
        if ev == "second":
            self.per_second[who] = r
            self.states_rates.setdefault(who, []).append(float(r["states"]))
        elif ev == "cut":
            self.cuts.setdefault(who, []).append(r)
            return [
                f"{stamp} x {who}: websocket cut at step {r['step']!r} "
                f"(TCP reset, {r['connections']} connection); data channel left alone"
            ]
        elif ev == "detached":
            return [f"{stamp} ~ {who}: transport lost at step {r['step']!r}, reconnecting"]
        elif ev == "resumed":
            self.resumes.setdefault(who, []).append(r)
            return [
                f"{stamp} ~ {who}: RESUMED at step {r['step']!r} after {_ms(r.get('ms'))}; "
                f"{r.get('states_while_cut')} world states arrived on the data channel meanwhile"
            ]
        elif ev in ("quit", "result"):
            self.per_second.pop(who, None)  # no stale status lines for a bot that is done
            if ev == "result":
                self.results[who] = r
        return []

    def status(self) -> list[str]:
        """The status block: the server's last second and each bot's (empty at first)."""
        if self._second is None:
            return []
        stamp, r = self._second
        lines = [f"{stamp} ticks {r['ticks']:.1f}/s, players {r['players']}"]
        for name in self.bots:
            s = self.per_second.get(name)
            if s is None:
                continue
            lines.append(
                f"         {name:<7} dc {s['states']:5.1f} states/s  loss {s['loss'] * 100:4.1f} %"
                f"  echo p99 {_ms(s.get('p99_ms')):>9}  sees {', '.join(s['seen']) or '-'}"
            )
        return lines

    # -- the end ---------------------------------------------------------------------

    def checks(self) -> list[tuple[bool, str]]:
        bots = self.bots
        joined = [b for b in bots if b in self.joined]
        found = [
            (len(joined) == len(bots), f"every bot joined ({len(joined)}/{len(bots)})"),
        ]
        blind = [
            b for b in bots if not set(bots) - {b} <= set(self.results.get(b, {}).get("seen", []))
        ]
        found.append(
            (not blind, "every bot saw the others move" + (f" (not: {blind})" if blind else ""))
        )
        if self.cut_bot is not None:
            cuts = self.cuts.get(self.cut_bot, [])
            res = self.results.get(self.cut_bot, {})
            where = [c["step"] for c in cuts]
            ok = (
                bool(cuts)
                and res.get("cut_steps") == where
                and res.get("resume_steps") == where  # the same step, every time
                and self.server_resumed.count(self.cut_bot) == len(cuts)
                and self.joins.count(self.cut_bot) == 1  # never a fresh player
            )
            times = f"{len(cuts)} times" if len(cuts) != 1 else "once"
            steps = ", ".join(sorted(map(repr, set(where))))
            text = f"{self.cut_bot} resumed where cut (step {steps}, {times})"
            if not ok:
                text += f": resumed at {res.get('resume_steps')!r}"
            found.append((ok, text))
        codes = {
            b: (self.left.get(b, {}).get("code"), self.results.get(b, {}).get("code")) for b in bots
        }
        bad = {b: c for b, c in codes.items() if c != (1000, 1000)}
        found.append((not bad, "every player left with 1000" + (f" (not: {bad})" if bad else "")))
        return found

    def summary(self) -> tuple[list[str], bool]:
        lines = ["", "Summary"]

        def line(label: str, value: str) -> None:
            lines.append(f"  {label:<30} {value}")

        held = self.ticks[1:-1] or self.ticks  # the first and last seconds are partial
        if held:
            line("ticks per second held", f"{sum(held) / len(held):.1f} (min {min(held):.1f})")
        rates = {b: v[1:-1] or v for b, v in self.states_rates.items()}
        if rates:
            per = [sum(v) / len(v) for v in rates.values() if v]
            line("data-channel states/s/player", f"{sum(per) / len(per):.1f} (min {min(per):.1f})")
        res = [r for b, r in self.results.items() if b in self.bots]
        if res:
            losses = [r["loss"] * 100 for r in res]
            line(
                "states lost (unreliable)",
                f"mean {sum(losses) / len(losses):.2f} %, max {max(losses):.2f} %",
            )
            p50 = [r["p50_ms"] for r in res if r.get("p50_ms") is not None]
            p99 = [r["p99_ms"] for r in res if r.get("p99_ms") is not None]
            if p99:
                line(
                    "input -> echo latency",
                    f"p50 {_ms(max(p50))}, p99 {_ms(max(p99))} "
                    "(worst bot; includes the wait for the next tick)",
                )
        if self.cut_bot is not None:
            took = sorted(r["ms"] for r in self.resumes.get(self.cut_bot, []) if r.get("ms"))
            if not took:
                line("resume", f"{self.cut_bot}: did not resume")
            elif len(took) == 1:
                line("resume (cut -> resumed)", _ms(took[0]))
            else:
                p99 = took[min(len(took) - 1, int(0.99 * len(took)))]
                line(
                    "resume (cut -> resumed)",
                    f"p50 {_ms(took[len(took) // 2])}, p99 {_ms(p99)} over {len(took)} cuts",
                )
        for text in self.errors[-10:]:
            lines.append(f"  ! {text}")
        checks = self.checks()
        for ok, text in checks:
            lines.append(f"  [{'ok' if ok else 'FAILED'}] {text}")
        players = len(self.joined)
        bots = sum(1 for r in self.joined.values() if r.get("bot"))
        closed = sum(1 for r in self.left.values() if r.get("code") == 1000)
        resumed = len(self.server_resumed)
        lines.append(f"players {players} ({bots} bots), resumed {resumed}, closed 1000 {closed}")
        return lines, all(ok for ok, _ in checks)
