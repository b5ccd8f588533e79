"""The data volume (Hetzner Cloud Volume, ext4 formatted by Pulumi) mounted where a
data role keeps its files, before the role's packages create them there."""

from pyinfra import host
from pyinfra.operations import files, server


def mount_data_volume(path: str) -> None:
    """Mount the host's volume at ``path`` (by its stable device id). Hosts without a
    volume (the lab) keep ``path`` on their own disk."""
    volume_id = host.data.get("volume_id")
    files.directory(name=f"Data directory {path}", path=path)  # its owner and mode are the role's
    if not volume_id:
        return
    device = f"/dev/disk/by-id/scsi-0HC_Volume_{int(volume_id)}"
    files.line(name=f"Data volume in fstab ({path})", path="/etc/fstab",
               line=f"^{device} ", replace=f"{device} {path} ext4 defaults,nofail,discard,noatime 0 2")
    server.mount(name=f"Data volume mounted at {path}", path=path, device=device, fs_type="ext4",
                 options=["defaults", "nofail", "discard", "noatime"])
