"""secrets-broker settings (env: HUTCH_SECRETS__*, plus the shared HUTCH_* groups).

    HUTCH_SECRETS__MASTER_KEYS=k2:BASE64,k1:BASE64   every master key that may wrap a data key
    HUTCH_SECRETS__ACTIVE_MASTER_KEY=k2               the one new data keys are wrapped under
    HUTCH_SECRETS__RESOLVER_TOKEN=...                 the egress-proxy's credential
    HUTCH_SECRETS__RESOLVER_PORT=50058                where the resolver listens

`hutch-secrets-broker new-master-key ID` prints a fresh key in that form.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from hutch.core.config import ServiceSettings


class SecretsOptions(BaseModel):
    master_keys: SecretStr = SecretStr("")
    # Empty: the only configured key (an error when there are several).
    active_master_key: str = ""
    # The egress-proxy's credential for SecretsResolver; distinct from HUTCH_INTERNAL_TOKEN, which the
    # gateway holds too. Empty: nothing can resolve a value.
    resolver_token: SecretStr = SecretStr("")
    resolver_host: str = "127.0.0.1"
    # 0 picks a free port (tests); the egress-proxy must be told the port, so deployments fix it.
    resolver_port: int = Field(default=50058, ge=0, le=65535)
    max_value_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)
    max_secrets_per_tenant: int = Field(default=1000, ge=1)
    max_grants_per_tenant: int = Field(default=5000, ge=1)
    # How often data keys still wrapped under an older master key are re-wrapped under the active one.
    rewrap_interval_s: float = Field(default=60.0, gt=0)


class SecretsBrokerSettings(ServiceSettings):
    secrets: SecretsOptions = SecretsOptions()
