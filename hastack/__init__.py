"""hastack: a highly available web stack on Hetzner Cloud, provisioned with Pulumi and converged with pyinfra."""
