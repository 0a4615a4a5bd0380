"""Who is calling: bearer-token validation, the local token issuer, and the account policy."""
