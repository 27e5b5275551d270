"""nginx.conf serving the /boot/ tree (iPXE scripts and images) when nginx, not
`plasmaboot serve`, is the HTTP server.

Every path is relative to nginx's prefix, so the file is self-contained: run it with
`nginx -p PREFIX -c nginx.conf`, with the `ipxe` target's output under PREFIX/www/boot/ipxe/
and the images under PREFIX/www/boot/.
"""

from __future__ import annotations

from plasmaboot.inventory.models import Inventory
from plasmaboot.render.common import HEADER, Files, RenderContext

DOCUMENT_ROOT = "www"
_HEALTH = '{"status":"healthy","services":{"http":"running"}}'


def render_nginx(inv: Inventory, ctx: RenderContext) -> Files:
    """nginx.conf: scripts never cached, images served with sendfile and revalidated."""
    listen = f"{inv.server.provisioning_ip}:{inv.server.http_port}"
    text = f"""\
# {HEADER}
# Cluster {inv.cluster.name}. Run: nginx -p PREFIX -c nginx.conf (check with -t).
worker_processes auto;
pid nginx.pid;
error_log error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/plain ipxe;
        application/json json;
        application/octet-stream efi kpxe;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server_tokens off;
    access_log access.log;
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;

    server {{
        listen {listen};
        server_name _;
        root {DOCUMENT_ROOT};

        location = /health {{
            default_type application/json;
            return 200 '{_HEALTH}';
        }}

        # Boot scripts change with the inventory: never let a cache hand out a stale one.
        location /boot/ipxe/ {{
            add_header Cache-Control "no-store" always;
            try_files $uri =404;
        }}

        # Kernels and initrds are large: zero-copy sendfile, ETag revalidation, Range.
        location /boot/ {{
            add_header Cache-Control "no-cache" always;
            try_files $uri =404;
        }}

        location / {{
            return 404;
        }}
    }}
}}
"""
    return {"nginx.conf": text}
