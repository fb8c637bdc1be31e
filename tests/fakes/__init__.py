"""Faithful fake upstreams (real local HTTP servers) for the gateway's tests.

* :class:`tests.fakes.openai_fake.FakeOpenAI` — ``/v1/chat/completions`` (JSON and SSE), ``/v1/embeddings`` (float and
  base64), ``/v1/models``; Bearer-key check.
* :class:`tests.fakes.ollama_fake.FakeOllama` — ``/api/chat`` (NDJSON by default), ``/api/embed``, ``/api/tags``,
  ``/api/show``, ``/api/version``.
* :mod:`tests.fakes.faults` — fault constructors (status, raw, hang, drop_after, error_after, stall_after, slow) and
  :class:`~tests.fakes.faults.RecordedRequest`.
* :mod:`tests.fakes.text` — the deterministic reply/token/embedding rules, to compute expectations.
* :class:`tests.fakes.server.RunningServer` — the background-thread aiohttp harness underneath.
* :mod:`tests.fakes.plugin` — ``fake_openai`` / ``fake_ollama`` pytest fixtures.

Example::

    with FakeOpenAI() as fake:
        fake.inject(faults.stall_after(2), path="/v1/chat/completions")
        ...  # the gateway streams from fake.base_url, its client hangs up after two chunks
        assert fake.wait_for_disconnects(1, timeout=5)
        assert fake.last_request.chunks_sent == 2
"""
