"""Write the files docker-compose.airflow.yml reads: ``.env`` and ``secrets/flux2_connections.json``.

    python scripts/compose_env.py                      # the emulator and MinIO (no money)
    FLUX2_API_KEY=rf_live_... python scripts/compose_env.py --real-api

``.env`` gets a generated Fernet key, JWT secret, UI password and MinIO password. Compose reads it to
fill in the compose file's ``${...}``, and no container takes it whole: each gets only the variables
its service names. The connections (the FLUX 2 API key included) go to a file mounted as a Docker
secret and read by Airflow's ``LocalFilesystemBackend``, so the key is in no environment variable, no
compose file and no ``docker inspect`` output. The same ``FLUX2_AWS_CONN_ID`` names the tasks' and
the FLUX view's AWS connection (``aws_minio`` with the emulator). Both files are written ``0600`` and
are ignored by git and by the image build. Existing files are kept unless ``--force``. Standard
library only: any ``python3`` runs it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UI_USER = "airflow"
#: The stack's emulator accepts this key only (``FLUX2_EMULATOR_API_KEY`` in docker-compose.airflow.yml):
#: a test key that bills nothing, not a secret.
EMULATOR_KEY = "rf_test_compose_key"
CONNECTIONS_FILE = "secrets/flux2_connections.json"


def env_values(*, real_api: bool, uid: int) -> dict[str, str]:
    """The variables of ``.env``: secrets generated here, nothing left empty."""
    values = {
        "AIRFLOW_UID": str(uid),
        # What cryptography's Fernet.generate_key() does, with the standard library only, so the
        # script runs with any python3 on the host.
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "_AIRFLOW_WWW_USER_USERNAME": UI_USER,
        "_AIRFLOW_WWW_USER_PASSWORD": secrets.token_urlsafe(12),
        "MINIO_ROOT_USER": "flux2-minio",
        "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(18),
    }
    if real_api:
        values.update(FLUX2_OUTPUT_URI="file:///opt/airflow/flux2-output", FLUX2_AWS_CONN_ID="")
    else:
        values.update(
            COMPOSE_PROFILES="emulator", FLUX2_OUTPUT_URI="s3://flux2-images/nightly", FLUX2_AWS_CONN_ID="aws_minio"
        )
    return values


def connections(*, real_api: bool, api_key: str | None, minio_user: str, minio_password: str) -> dict[str, dict]:
    """The connections file of Airflow's ``LocalFilesystemBackend``."""
    if real_api and not api_key:
        raise SystemExit("--real-api needs the key in FLUX2_API_KEY (it is written to the secret file only)")
    flux: dict = {
        "conn_type": "flux2",
        "host": "https://api.runflow.io" if real_api else "http://flux2-emulator:8787",
        "password": api_key if real_api else EMULATOR_KEY,
    }
    if not real_api:
        # The hook refuses plain http off loopback unless the connection allows it for its own host:
        # the emulator is reached over the stack's private network.
        flux["extra"] = {"allow_plain_http": True}
    result: dict[str, dict] = {"flux2_default": flux}
    if not real_api:
        result["aws_minio"] = {
            "conn_type": "aws",
            "login": minio_user,
            "password": minio_password,
            "extra": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"},
        }
    return result


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-api", action="store_true", help="no emulator or MinIO; the key from FLUX2_API_KEY")
    parser.add_argument("--dir", type=Path, default=REPO, help="where to write (default: the repository)")
    parser.add_argument("--force", action="store_true", help="replace existing files (new secrets)")
    args = parser.parse_args(argv)

    env_file, conn_file = args.dir / ".env", args.dir / CONNECTIONS_FILE
    if not args.force and (env_file.exists() or conn_file.exists()):
        print(f"{env_file} or {conn_file} exists; keeping them (use --force to regenerate)")
        return 0
    values = env_values(real_api=args.real_api, uid=os.getuid())
    conns = connections(
        real_api=args.real_api,
        api_key=os.environ.get("FLUX2_API_KEY"),
        minio_user=values["MINIO_ROOT_USER"],
        minio_password=values["MINIO_ROOT_PASSWORD"],
    )
    _write_private(env_file, "".join(f"{k}={v}\n" for k, v in values.items()))
    _write_private(conn_file, json.dumps(conns, indent=2) + "\n")
    print(f"Wrote {env_file} and {conn_file} (0600).")
    print(f"UI login: {UI_USER} / {values['_AIRFLOW_WWW_USER_PASSWORD']}  (also in .env)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
