"""Benchmark: callagent between simulated gateways and the FastGPT emulator, on loopback.

The FastGPT emulator (``python -m scripts.emulators.fastgpt``) and callagent (``python -m callagent
serve``) run as separate processes; this process is the load generator. Every latency figure
compares, in the same run, the same calls made directly to the emulator and through callagent:

- added time to first text: p50/p99 of the first ``text_delta`` through callagent minus
  p50/p99 of the first *speakable* ``answer`` chunk read directly (the chunk that completes
  the leading ``<state>`` tag and carries the first character after it; callagent's own tag
  parser decides, so both sides apply the same rule), at 1, 10, 100 (and 1000) calls;
- the same for the first clause (``?segment=clause``; directly, callagent's clause segmenter
  runs on the direct stream);
- turns per second at saturation, and the callagent process's CPU time (utime + stime from
  ``/proc/<pid>/stat``) per turn and per event it forwarded;
- resident memory (``VmRSS``) per idle WebSocket and per streaming turn;
- time from a WebSocket ``interrupt`` (and from an SSE client hanging up) to the emulator
  seeing its connection closed;
- callagent's CPU per turn and per event against a bare relay's (``relay``, its own process,
  the same emulator and load, back to back in rounds; medians), over SSE, WebSocket and the
  OpenAI-compatible route, with the memory and SQLite stores, and the garbage collections per
  1,000 turns of each (both run under ``gcwatch``, which counts them from outside);
- sizing: CPU per turn at 10, 100 and 1000 calls (not 1000 with ``--quick``), and the most
  calls a callagent pinned to one core serves with added p99 first text under 50 ms (a
  search bounded in time).

A *call* is one simulated phone call: one session, its turns back to back (closed loop, no
think time), each turn a whole streamed reply. "N calls" means N such calls at once; each
call's first turn (connection set-up) is a warm-up and is not counted.

Clocks: every timestamp is ``time.monotonic()`` (``CLOCK_MONOTONIC``). The emulator stamps
its stream logs with its event loop's ``loop.time()``, which on Linux is the same system-wide
clock, so "interrupt sent here" and "connection closed there" can be subtracted. The run
checks it: each upstream stream must start after its call was sent and before the call's
first text arrived, or the interrupt figures are flagged.

Modes: ``--quick`` (about a minute), the default (about six minutes on two cores; ``make
bench``) and ``--full`` (adds 1000 concurrent calls, 5000 idle WebSockets and the console's
figures from ``scripts/console_bench.py``). ``--json PATH`` writes every
figure. ``--loop asyncio`` runs callagent on the standard event loop instead of uvloop.
``--py-spy PATH`` records a flame graph of callagent during the saturation run.

Run from the repository root: ``python -m scripts.bench`` (``make bench``). The package follows
the run's sections: ``common`` (constants, modes, statistics), ``processes``, ``calls`` (one
call), ``load`` (closed-loop calls), ``scenarios``, ``sizing`` (the relay comparison and the
sizing figures), ``run``, ``report`` and ``__main__``; ``relay`` and ``gcwatch`` run as
processes of their own.
"""
