"""Pulumi components: Hetzner Cloud servers and the AWS backup bucket."""
