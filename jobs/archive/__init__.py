"""What Handover hands out: export archives and signed receipts, built, signed and checked.

- :mod:`~jobs.archive.formats`: a dataset's records rendered as ``json``, ``ndjson`` or ``csv``;
- :mod:`~jobs.archive.staging`: a connector's items encoded and deflated into one staged object;
- :mod:`~jobs.archive.writer`: the staged parts bundled into one signed, streamed ZIP;
- :mod:`~jobs.archive.index`: its ``index.html``, the whole Art. 15 answer in the subject's
  language (``templates/export_index.html``), with :mod:`~jobs.archive.preview` (each
  dataset's bounded preview, gathered while staging) and :mod:`~jobs.archive.charts`
  (time series as inline SVG);
- :mod:`~jobs.archive.zipwriter`: the sans-I/O ZIP writer the bundling uses;
- :mod:`~jobs.archive.protection`: a password (AES, WinZip AE-2) or an age recipient, per request;
- :mod:`~jobs.archive.signing`: Ed25519 signatures and the public keys that check them;
- :mod:`~jobs.archive.receipt`: erasure and restriction receipts, signed like a manifest;
- :mod:`~jobs.archive.verify`: checking an archive or a receipt with the public keys alone.
"""
