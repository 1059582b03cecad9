"""Starting and stopping the sandbox as a whole, and the Airflow connections that reach it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pyodbc
import requests

from lienthong.connectors import connection
from lienthong.sandbox import dossier_db, dossier_system, seed
from lienthong.sandbox.http import HOST
from lienthong.settings import Settings
from lienthong.signing.keys import KeyPaths

PORTAL_USER = "lgsp-sandbox"


def dossier_db_connection(s: Settings) -> dict[str, Any]:
    """The embedded default: a SQLite file reached through the SQLite3 ODBC driver."""
    return {"conn_type": "odbc", "schema": str(s.sandbox_dir / "dossiers.db"), "extra": {"driver": "SQLite3"}}


def portal_password(s: Settings) -> str:
    """Made once per data folder and kept (0600), like a credential issued to the province."""
    users_file = s.sandbox_dir / "portal-users.json"
    if not users_file.exists():
        s.sandbox_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(users_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({PORTAL_USER: secrets.token_urlsafe(18)}, handle)
    return json.loads(users_file.read_text())[PORTAL_USER]


@dataclass
class Sandbox:
    settings: Settings
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def connections(self) -> dict[str, dict[str, Any]]:
        """The sandbox's systems as Airflow connections. The population database's allows 8 calls
        in flight, half what the sandbox serves at once: at 20 ms a call its answers, not the hub,
        held verify back with 4 (50,000 citizens in 4.1 s, 2.8 s with 8). The portal's takes 500
        records a call, what the portal accepts: a 500-record part goes in one call instead of three
        (on two cores the portal checks it in four even chunks, not 125 and 75 records), and
        100,000 records were pushed in 8.2–8.5 s instead of 10.6–11.1 s."""
        return {
            connection.DOSSIER_DB: dossier_db_connection(self.settings),
            connection.POPULATION: {"conn_type": "http", "host": HOST, "port": self.ports["population"],
                                    "schema": "http", "extra": {"path": "/population", "concurrency": 8}},
            connection.PORTAL: {"conn_type": "http", "host": HOST, "port": self.ports["portal"], "schema": "http",
                                "login": PORTAL_USER, "password": portal_password(self.settings),
                                "extra": {"batch_size": 500}},
            connection.TSA: self.tsa_connection(),
            **self.dossier_system_connections(),
        }

    def tsa_connection(self) -> dict[str, Any]:
        """The time-stamping authority; ``ca_file`` is the root its tokens chain to."""
        return {"conn_type": "http", "host": HOST, "port": self.ports["tsa"], "schema": "http",
                "extra": {"path": "/tsa", "ca_file": str(self.settings.sandbox_dir / "tsa" / "tsa-ca.pem")}}

    def dossier_system_connections(self) -> dict[str, dict[str, Any]]:
        """The district (SOAP) and commune (REST) systems, when this sandbox runs them."""
        conns: dict[str, dict[str, Any]] = {}
        if "dossier_soap" in self.ports:
            conns[connection.DISTRICT_SOAP] = {"conn_type": "http", "host": HOST, "port": self.ports["dossier_soap"],
                                               "schema": "http", "extra": {"path": "/dossiers"}}
        if "dossier_rest" in self.ports:
            login, password = dossier_system.credentials(self.settings.sandbox_dir, dossier_system.COMMUNE)
            conns[connection.COMMUNE_REST] = {"conn_type": "http", "host": HOST, "port": self.ports["dossier_rest"],
                                              "schema": "http", "login": login, "password": password}
        return conns

    def start(self, latency_ms: dict[str, float] | None = None) -> "Sandbox":
        s = self.settings
        s.sandbox_dir.mkdir(parents=True, exist_ok=True)
        s.logs_dir.mkdir(parents=True, exist_ok=True)
        portal_password(s)
        for name, port in self.ports.items():
            port_file = self._port_file(name)
            port_file.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "lienthong.sandbox.serve", name, "--port", str(port),
                   "--port-file", str(port_file), "--data-dir", str(s.sandbox_dir), "--access-log",
                   "--latency-ms", str((latency_ms or {}).get(name, 0.0))]
            if name == "portal":
                paths = KeyPaths.in_dir(s.keys_dir)
                cmd += ["--trust-store", str(paths.ca_cert)] + (["--crl", str(paths.crl)] if paths.crl.exists() else [])
            log = open(s.logs_dir / f"sandbox-{name}.log", "ab")
            self.processes[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for name in self.ports:
            self._wait_healthy(name)
        return self

    def _port_file(self, name: str) -> Path:
        return self.settings.sandbox_dir / f"{name}.port"

    def _wait_healthy(self, name: str, timeout: float = 60) -> None:
        """Until the service answers; a port of 0 becomes the one it bound (it writes it to its
        port file). Binding the port itself is what keeps two sandboxes from racing for one:
        a port found free here could be taken before the service got to bind it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"sandbox {name} exited; see {self.settings.logs_dir / f'sandbox-{name}.log'}")
            if not self._port_file(name).exists():
                time.sleep(0.05)
                continue
            self.ports[name] = int(self._port_file(name).read_text())
            try:
                if requests.get(f"{self.url(name)}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sandbox {name} did not answer on port {self.ports[name]}")

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start(s: Settings, ports: dict[str, int] | None = None, latency_ms: dict[str, float] | None = None) -> Sandbox:
    from lienthong.sandbox.serve import SERVICES

    ports = ports or dict.fromkeys(SERVICES, 0)
    return Sandbox(s, ports).start(latency_ms)


def seed_dossiers(s: Settings, conn_str: str, count: int, updated_at: Any = None) -> int:
    """Adds ``count`` dossiers after the existing ones and registers their citizens."""
    from lienthong.sandbox.population import PopulationRegistry

    with pyodbc.connect(conn_str, autocommit=False) as conn:
        dossier_db.create_schema(conn)
        first_dossier, first_applicant = dossier_db.next_ids(conn)
        made = seed.generate(count, first_dossier_id=first_dossier, first_applicant_id=first_applicant,
                             updated_at=updated_at)
        dossier_db.insert(conn, made)
    PopulationRegistry(s.sandbox_dir / "population.db").add_citizens(made.citizens)
    return count


def seed_system(s: Settings, system: str, count: int, updated_at: Any = None) -> int:
    """Adds ``count`` dossiers to one of the sandbox's dossier systems ("odbc", "soap", "rest")
    and registers their citizens in the population database."""
    from lienthong.sandbox.population import PopulationRegistry

    if system == "odbc":
        return seed_dossiers(s, _odbc_string(s), count, updated_at)
    s.sandbox_dir.mkdir(parents=True, exist_ok=True)
    made = dossier_system.seed_system(s.sandbox_dir / _system(system).db_file, _system(system), count, updated_at)
    PopulationRegistry(s.sandbox_dir / "population.db").add_citizens(made.citizens)
    return count


def answer_key(s: Settings, system: str) -> dict[str, str | None]:
    """Dossier code -> the defect seeded into it (None for a good one), for one system."""
    if system == "odbc":
        with pyodbc.connect(_odbc_string(s), autocommit=False) as conn:
            dossier_db.create_schema(conn)  # an empty system has an empty answer key
            conn.commit()
            return dossier_db.truth(conn)
    return dossier_system.truth(s.sandbox_dir / _system(system).db_file)


def _odbc_string(s: Settings) -> str:
    return dossier_system.connection_string(Path(dossier_db_connection(s)["schema"]))


def _system(name: str) -> dossier_system.System:
    if name not in dossier_system.SYSTEMS:
        raise ValueError(f"unknown dossier system {name!r}; expected odbc, soap or rest")
    return dossier_system.SYSTEMS[name]
