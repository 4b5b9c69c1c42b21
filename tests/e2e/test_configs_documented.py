"""docs/deployment.md shows exactly the nginx and HAProxy configurations the e2e tests run."""

from pathlib import Path

import pytest
from e2e_support import H2C, PROXY_V2, render

DEPLOYMENT = Path(__file__).parents[2] / "docs" / "deployment.md"

# The values the documentation fills in where the tests put loopback ports and temp files.
NGINX_DOC_VALUES = {
    "UPSTREAM": "127.0.0.1:8000",
    "LISTEN": "80",
    "TLS_LISTEN": "443",
    "CERT": "/etc/ssl/certs/example.com.pem",
    "KEY": "/etc/ssl/private/example.com.key",
}
HAPROXY_DOC_VALUES = {"LISTEN": ":80", "SERVER_A": "10.0.0.11:8000", "SERVER_B": "10.0.0.12:8000"}


def test_nginx_site_config_is_documented():
    assert render("nginx-site.conf", **NGINX_DOC_VALUES) in DEPLOYMENT.read_text()


def test_haproxy_config_is_documented():
    config = render("haproxy.cfg", **HAPROXY_DOC_VALUES, SERVER_OPTIONS="")
    assert config in DEPLOYMENT.read_text()


@pytest.mark.parametrize("options", [PROXY_V2, H2C])
def test_haproxy_servers_with_options_are_documented(options):
    config = render("haproxy.cfg", **HAPROXY_DOC_VALUES, SERVER_OPTIONS=f" {options}")
    servers = [line for line in config.splitlines() if line.lstrip().startswith("server ")]
    assert "\n".join(servers) in DEPLOYMENT.read_text()
