"""`python -m stack.token --role guide --subject pos-17 --ttl 3600`: mint a bearer
token for any role, signed with the deployment's auth secret: POND_AUTH_SECRET_FILE
or POND_AUTH_SECRET when set, otherwise the secret `make run` keeps in the data
directory (POND_DATA_DIR, default .pond). Prints only the token, so
`TOKEN=$(python -m stack.token ...)` works."""

from __future__ import annotations

import argparse
import sys

from services.runtime.auth import Role, mint_token
from services.runtime.config import RuntimeSettings
from stack.secrets import existing_dev_secret, secret_path


def auth_secret() -> str:
    """The secret `make run` signs with; raises LookupError saying where it looked."""
    settings = RuntimeSettings()
    if settings.auth_secret_file:
        try:
            secret = settings.secret()
        except OSError as exc:
            raise LookupError(
                f"cannot read POND_AUTH_SECRET_FILE {settings.auth_secret_file}: {exc.strerror}"
            ) from exc
        if not secret:
            raise LookupError(f"POND_AUTH_SECRET_FILE {settings.auth_secret_file} is empty")
        return secret
    if settings.auth_secret:
        return settings.auth_secret
    secret = existing_dev_secret(settings.data_dir, "auth.secret")
    if not secret:
        where = secret_path(settings.data_dir, "auth.secret").resolve()
        raise LookupError(
            f"no auth secret: set POND_AUTH_SECRET or POND_AUTH_SECRET_FILE, or point "
            f"POND_DATA_DIR at a data directory that `make run` has used (no {where})"
        )
    return secret


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.token", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--subject", required=True, help="who the token is for (e.g. pos-17)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds it is valid (default 3600)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be a positive number of seconds")
    if not args.subject.strip():
        parser.error("--subject must not be empty")
    try:
        secret = auth_secret()
    except LookupError as exc:
        print(f"stack.token: {exc}", file=sys.stderr)
        return 2
    # The deployment's key id, issuer and algorithm (POND_AUTH_*), with the secret found.
    auth = RuntimeSettings(auth_secret=secret, auth_secret_file="").auth_config()
    print(mint_token(auth, args.subject, Role(args.role), ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
