"""Runs one sandbox service in the foreground: ``python -m lienthong.sandbox.serve NAME ...``.

Each service gets its own process, as the real systems are separate machines: the portal's
signature checks and the population database's latency do not share a core's GIL with the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from pathlib import Path

from lienthong.sandbox.faults import FaultConfig
from lienthong.sandbox.http import build_server

SERVICES = ("population", "portal", "dossier_soap", "dossier_rest", "tsa")


def build_app(name: str, data_dir: Path, trust_store: Path | None, faults: FaultConfig,
              crl: Path | None = None) -> object:
    if name == "population":
        from lienthong.sandbox import population

        return population.create_app(data_dir / "population.db", faults=faults)
    if name == "dossier_soap":
        from lienthong.sandbox import dossier_soap
        from lienthong.sandbox.dossier_system import DISTRICT

        return dossier_soap.create_app(data_dir / DISTRICT.db_file, faults=faults)
    if name == "dossier_rest":
        from lienthong.sandbox import dossier_rest
        from lienthong.sandbox.dossier_system import COMMUNE

        return dossier_rest.create_app(data_dir / COMMUNE.db_file, data_dir, faults=faults)
    if name == "tsa":
        from lienthong.sandbox import tsa

        return tsa.create_app(data_dir, faults=faults)
    from lienthong.sandbox import portal
    from lienthong.signing.trust import TrustStore

    users = json.loads((data_dir / "portal-users.json").read_text())
    # Its record checks on every core, as a real portal's would be: see portal.RecordJudge.
    return portal.create_app(data_dir / "portal.db", TrustStore.from_pem_files([trust_store], [crl] if crl else []),
                             users, faults=faults, judges=os.cpu_count() or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=SERVICES)
    parser.add_argument("--port", type=int, required=True, help="0: any free port, written to --port-file")
    parser.add_argument("--port-file", type=Path, help="where to write the port bound, once listening")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trust-store", type=Path, help="CA certificates the portal trusts (PEM)")
    parser.add_argument("--crl", type=Path, help="the CA's revocation list the portal checks (PEM)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    faults = FaultConfig(latency_ms=args.latency_ms, error_rate=args.error_rate)
    app = build_app(args.name, args.data_dir, args.trust_store, faults, args.crl)
    # Stopped by SIGTERM: exit as on Ctrl-C, so that the portal's judge workers are shut down too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = build_server(app, args.port, access_log=args.access_log)
    if args.port_file:  # whole or absent: the parent polls for it
        tmp = args.port_file.with_name(f"{args.port_file.name}.tmp")
        tmp.write_text(str(server.server_port))
        tmp.replace(args.port_file)
    gc.freeze()  # what start-up made lives as long as the service: no collection need walk it again
    server.serve_forever()


if __name__ == "__main__":
    main()
