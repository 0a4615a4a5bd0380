"""The connection to a cluster: pooled SSH as each user, their SSH credentials, bounded
remote commands."""
