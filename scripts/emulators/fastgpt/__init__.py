"""A FastGPT OpenAPI emulator: a real aiohttp server that answers like a FastGPT app.

callagent's tests, benchmarks and demos point their FastGPT base URL at this server. It speaks
the chat OpenAPI as FastGPT builds do, ugly parts included: named SSE events with single-line
JSON, empty-content heartbeats, ``workflowDuration`` before the stop chunk and ``[DONE]``,
``flowResponses`` after ``[DONE]`` (v1) or ``flowNodeResponse`` per node (v2), ``event: error``
frames behind HTTP 200, envelopes with HTTP 200 and a failing ``code``, array contents, and the
chat record/history CRUD endpoints under both the legacy and the newer path families.

It can be any of the releases a customer may run (``builds``: ``--build 4.8.15|4.11|4.14.5|4.14.11|4.15``,
``create_emulator_app(build=...)``, ``Emulator.set_build`` or ``POST /__emulator/build``; the
newest by default): which paths exist, where a record delete reads its ids, error statuses,
end events and the stop chunk, ``flowResponses`` before or after ``[DONE]``, dropped undeclared
variables, when a run whose client left is saved, 504001 ``chatIsGenerating``, the stop API,
interactive nodes (wrapped, forms, ``paymentPause``) and an unmatched userSelect answer that
ends the run in silence.

The package follows the server's sections:

- ``builds``: the releases and what differs between them;
- ``brains``: who writes the replies (``ScriptedBrain``, ``LocalBrain``);
- ``faults``: the fault modes that turn the next completions calls into a misbehaving upstream;
- ``state``: the ``Emulator`` (settings, requests seen, stored chats, stream logs);
- ``wire``: SSE frames, chunks, envelopes and error bodies;
- ``feed``: the brain's reply item by item, heartbeating while it is silent;
- ``completions``: one ``Run`` per completions call, and the stop API;
- ``records``: the chat history and record endpoints;
- ``control``: ``/__emulator/...`` for out-of-process users;
- ``app``: ``create_emulator_app`` and the routes; ``__main__``: the command line.

Everything a test wants to assert sits on the app under ``EMULATOR``. The handler is cancelled
when the client leaves, so the server must run with ``handler_cancellation=True``, as aiohttp's
test server does.

Usage: ``python -m scripts.emulators.fastgpt --port 3000 [--reply TEXT ...] [--fault MODE]``.
"""

from .app import create_emulator_app
from .brains import DEFAULT_REPLY, Brain, LocalBrain, ScriptedBrain
from .builds import BUILDS, DEFAULT_BUILD, Build
from .faults import FAULT_MODES
from .state import EMULATOR, Chat, Emulator, RecordedRequest, StreamLog

__all__ = [
    "BUILDS",
    "DEFAULT_BUILD",
    "DEFAULT_REPLY",
    "EMULATOR",
    "FAULT_MODES",
    "Brain",
    "Build",
    "Chat",
    "Emulator",
    "LocalBrain",
    "RecordedRequest",
    "ScriptedBrain",
    "StreamLog",
    "create_emulator_app",
]
