"""vault-observe: HashiCorp Vault / OpenBao audit log -> traces."""

__version__ = "0.1.0"
