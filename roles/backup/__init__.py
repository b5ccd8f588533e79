PORTS = ()  # backups push to S3; nothing listens
