"""The API answers as its own description says: schemathesis (a property-based
API tester) reads a real daemon's /openapi.json and sends it generated requests,
the token with them, a bounded number per operation; every answer must be one
the description lists, with the body and headers it lists, a 405 must name every
method of its path, and no request may get a server error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.daemon import Daemon, service_config, stemd
from support.http import EPHEMERAL, client, http_url
from support.waiting import wait_until

# Every check but positive_data_acceptance: a request that fits the schema may still
# be refused for its content (bytes that are not audio get 422 with the reason), and
# no schema can say "audio".
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
    "missing_required_header,unsupported_method,allow_header_conformance,"
    "use_after_free,ensure_resource_availability"
)
EXAMPLES = 25  # per operation and phase: the run stays well under a minute on 2 cores


def test_every_answer_is_one_the_description_lists(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    made = stemd("token", "new", str(token_file), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    token = token_file.read_text().strip()
    http = {**EPHEMERAL, "token_file": str(token_file), "max_upload": "1MiB"}
    http["predict_timeout"] = "2s"
    daemon = Daemon(service_config(tmp_path, http=http), tmp_path).start()
    try:
        url = http_url(daemon)
        # a failed job 1 (the id the generated requests try first, the minimum), so
        # retry, dismiss and the job's routes answer more than 404
        (tmp_path / "junk.mp3").write_text("not music\n")
        os.rename(tmp_path / "junk.mp3", tmp_path / "inbox/junk.mp3")
        with client(url, token=token) as api:
            wait_until(
                lambda: api.get("/api/v1/jobs/1").json().get("state") == "failed",
                60,
                "job 1 to fail",
            )
            described = api.get("/openapi.json").json()
        # the statuses each route can answer are in the description, with bodies
        retry = described["paths"]["/api/v1/jobs/{job_id}/retry"]["post"]["responses"]
        assert {"400", "401", "403", "404", "409", "422", "503"} <= set(retry)
        predict = described["paths"]["/predict"]["post"]["responses"]
        assert {"400", "401", "413", "422", "500", "503", "504"} <= set(predict)
        assert "application/json" in predict["504"]["content"]

        run = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"),
                *("--header", f"Authorization: Bearer {token}"),
                *("--checks", CHECKS),
                *("--max-examples", str(EXAMPLES), "--seed", "30"),
                # one worker: CPython 3.11 before 3.11.8 builds ASTs racily from threads
                # (gh-106905, "AST constructor recursion depth mismatch"), and
                # schemathesis compiles code while it generates: two workers made
                # the run fail now and then with a SystemError of its own
                *("--phases", "examples,coverage,fuzzing", "--workers", "1"),
                # the event stream never ends by itself: tests/e2e/test_http.py reads it
                *("--exclude-path", "/api/v1/events"),
                *("--request-timeout", "20", "--no-shrink"),
                *("--suppress-health-check", "all", "--report-dir", str(tmp_path / "report")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
        assert "Server error" not in run.stdout
        # the token went with every request: the operations were reached
        assert "generated" in run.stdout
    finally:
        assert daemon.stop() == 0, daemon.log()
