"""HTTP: the seed's /predict, the jobs API, the page, health and metrics.

- `server`: uvicorn on a thread the Service owns; binds http.listen;
- `app`: the FastAPI app and its guard (token, request metrics);
- `api`: /api/v1 (jobs, stems, zip, retry, status, info, events);
- `predict`: the seed-compatible /predict;
- `ops`: /ping, /health, /metrics;
- `spool`: uploads onto local disk as they stream in;
- `context`: what every route shares, and the job as the API shows it;
- `events`: job events from the log, fanned out to streams and metrics;
- `metrics`: Prometheus; `auth`: the token; `view`: the daemon as routes see it;
- `static/`: the page (no CDN, no build step).
"""
