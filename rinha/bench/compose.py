"""compose.yaml run under Docker as the contest runs it (SPEC.md §5), for the bench's `--compose`
and tests/test_deployment.py.

The image is built from the Containerfile; the two processors, the project's emulator from the
same image, run as containers under the contest's names on the external network
`payment-processor`, outside the stack's limits, with their port published on the loopback for
the admin calls; then the stack is `up` on port 9999. `stop()` removes all of it, volumes too.
Needs root, Debian's docker.io client (/usr/bin/docker builds with BuildKit, which the
Containerfile's build secret needs; a lone newer client without buildx cannot) and Compose v1
(docker-compose) or v2.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_YAML = ROOT / "compose.yaml"
DOCKER = "/usr/bin/docker"
IMAGE = "rinha:local"  # compose.yaml's
# Debian's CA bundle, handed to pip in the build as a secret where a proxy re-signs PyPI's
# certificate (Containerfile).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PROCESSORS_NETWORK = "payment-processor"
PROCESSOR_NAMES = ("default", "fallback")
PUBLIC_PORT = 9999
READY_TIMEOUT = 60.0


class ComposeError(Exception):
    """Docker or Compose refused a step; the message has what it said."""


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ComposeError(f"docker {' '.join(args)}: {done.stdout}{done.stderr}".strip())
    return done.stdout.strip()


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]  # Compose v1, which Debian 12 packages
    return [DOCKER, "compose"]


def build_image() -> None:
    command = [DOCKER, "build", "--file", str(ROOT / "Containerfile"), "--tag", IMAGE]
    if HOST_CA_BUNDLE.exists():
        command += ["--secret", f"id=ca-certificates,src={HOST_CA_BUNDLE}"]
    built = subprocess.run(
        [*command, str(ROOT)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise ComposeError(f"the image did not build:\n{built.stdout}{built.stderr}")


def wait_answering(port: int, path: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise ComposeError(f"nothing answered 200 on 127.0.0.1:{port}{path}")
        time.sleep(0.1)


class ComposeStack:
    """compose.yaml as Compose project `project`, with processors charging `fees`."""

    def __init__(self, project: str, fees: tuple[str, str], processor_ports: tuple[int, int]):
        self.project = project
        self.fees = dict(zip(PROCESSOR_NAMES, fees))
        self.processor_ports = dict(zip(PROCESSOR_NAMES, processor_ports))
        self.compose = [*compose_command(), "-p", project, "-f", str(COMPOSE_YAML)]
        self.started_processors: list[str] = []
        self.made_network = False

    def run_compose(self, *args: str) -> str:
        done = subprocess.run([*self.compose, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ComposeError(f"compose {' '.join(args)}: {done.stdout}{done.stderr}".strip())
        return done.stdout.strip()

    def start(self) -> None:
        """The network, the processors, then the stack; call stop() whatever happens."""
        taken = [f"payment-processor-{name}" for name in PROCESSOR_NAMES]
        taken = [name for name in taken if docker("ps", "-aq", "--filter", f"name=^{name}$")]
        if docker("network", "ls", "-q", "--filter", f"name=^{PROCESSORS_NETWORK}$"):
            taken.append(f"network {PROCESSORS_NETWORK}")
        if taken:
            raise ComposeError(f"already there, and this run needs its own: {', '.join(taken)}")
        docker("network", "create", "--driver", "bridge", PROCESSORS_NETWORK)
        self.made_network = True
        for name, fee in self.fees.items():
            container = f"payment-processor-{name}"
            docker(
                "run", "--detach", "--name", container, "--network", PROCESSORS_NETWORK,
                "--publish", f"127.0.0.1:{self.processor_ports[name]}:8080",
                "--entrypoint", "/opt/rinha/bin/python", IMAGE,
                "-m", "rinha.emulator", "--fee", fee, "--host", "0.0.0.0", "--port", "8080",
            )  # fmt: skip
            self.started_processors.append(container)
        for port in self.processor_ports.values():
            wait_answering(port, "/payments/service-health")
        self.run_compose("up", "--detach", "--no-build")
        wait_answering(PUBLIC_PORT, "/payments-summary")

    def services(self) -> list[str]:
        return self.run_compose("config", "--services").split()

    def container(self, service: str) -> str:
        return self.run_compose("ps", "-q", service)

    def inspect(self, service: str) -> dict[str, Any]:
        described: list[dict[str, Any]] = json.loads(docker("inspect", self.container(service)))
        return described[0]

    def pid(self, service: str) -> int:
        """The host pid of the service's main process."""
        return int(self.inspect(service)["State"]["Pid"])

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of the project that are still there."""
        label = f"label=com.docker.compose.project={self.project}"
        return [
            line
            for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"])
            for line in docker(*kind, "--quiet", "--filter", label).splitlines()
        ]

    def stop(self) -> None:
        subprocess.run([*self.compose, "down", "-v"], capture_output=True, check=False)
        for container in self.started_processors:
            docker("rm", "--force", container, check=False)
        if self.made_network:
            docker("network", "rm", PROCESSORS_NETWORK, check=False)
