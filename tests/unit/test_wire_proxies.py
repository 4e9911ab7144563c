"""`wire.proxies.proxy_for`: which proxy the environment names for a URL, and which URLs NO_PROXY exempts."""

from __future__ import annotations

import base64

import pytest

from wire.proxies import Proxy, ProxyError, proxy_for

GH = "https://github.com/k3s-io/k3s/releases/download/v1.30.5%2Bk3s1/k3s"


def test_no_proxy_variables_no_proxy() -> None:
    assert proxy_for(GH, {}) is None
    assert proxy_for(GH, {"HTTPS_PROXY": "  "}) is None, "an empty value is unset"


def test_each_scheme_has_its_own_variable() -> None:
    env = {"HTTPS_PROXY": "http://secure-proxy:3128", "HTTP_PROXY": "http://plain-proxy:8080"}
    assert proxy_for(GH, env) == Proxy("secure-proxy", 3128)
    assert proxy_for("http://mirror.example/k3s", env) == Proxy("plain-proxy", 8080)
    assert proxy_for("http://mirror.example/k3s", {"HTTPS_PROXY": "http://p:1"}) is None
    ftp = {"FTP_PROXY": "http://p:1", "HTTP_PROXY": "http://p:2"}
    assert proxy_for("ftp://mirror.example/k3s", ftp) is None



def test_the_uppercase_name_wins_as_in_go() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    assert proxy_for(GH, env) == Proxy("upper", 2)
    assert proxy_for(GH, {"https_proxy": "http://lower:1", "HTTPS_PROXY": ""}) == Proxy("lower", 1)


@pytest.mark.parametrize(("value", "proxy"), [
    ("proxy.corp:3128", Proxy("proxy.corp", 3128)),
    ("http://proxy.corp", Proxy("proxy.corp", 80)),
    ("http://proxy.corp:3128/", Proxy("proxy.corp", 3128)),
    ("HTTP://[fd00::1]:3128", Proxy("fd00::1", 3128)),
])
def test_proxy_urls(value: str, proxy: Proxy) -> None:
    assert proxy_for(GH, {"HTTPS_PROXY": value}) == proxy


def test_credentials_become_a_basic_authorization() -> None:
    got = proxy_for(GH, {"HTTPS_PROXY": "http://me:p%40ss%3Aw@proxy:3128"})
    assert got is not None
    assert got.authorization == "Basic " + base64.b64encode(b"me:p@ss:w").decode()
    assert got.headers == {"Proxy-Authorization": got.authorization}
    assert got.url == "http://proxy:3128", "the URL used in messages carries no password"
    assert "p%40ss" not in str(got) and "p@ss" not in str(got)
    assert Proxy("fd00::1", 3128).url == "http://[fd00::1]:3128"
    assert Proxy("proxy", 1).headers == {}


@pytest.mark.parametrize("value", ["https://proxy:3128", "socks5://proxy:1080", "http://:3128", "http://p:99999",
                                   "https://alice:S3cret@proxy:3128", "http://alice:S3cret@p:99999/x",
                                   "alice:S3cret@p:99999"])
def test_unusable_proxies_are_errors_naming_the_variable_not_the_password(value: str) -> None:
    with pytest.raises(ProxyError, match="https_proxy") as caught:
        proxy_for(GH, {"https_proxy": value})
    assert "S3cret" not in str(caught.value) and "alice" not in str(caught.value)
    if "@" in value:
        assert "***@p" in str(caught.value)


@pytest.mark.parametrize(("no_proxy", "url", "exempt"), [
    ("*", GH, True),
    ("github.com", GH, True),
    (".github.com", GH, True),
    ("*.github.com", GH, True),
    ("github.com", "https://objects.github.com/k3s", True),
    ("github.com", "https://notgithub.com/k3s", False),
    ("hub.com", GH, False),
    ("GitHub.COM.", GH, True),
    ("example.com, github.com", GH, True),
    ("example.com,,", GH, False),
    ("github.com:443", GH, True),
    ("github.com:8443", GH, False),
    ("mirror:8080", "http://mirror:8080/k3s", True),
    ("10.43.0.0/16", "http://10.43.12.7/k3s", True),
    ("10.43.0.0/16", "http://10.44.12.7/k3s", False),
    ("10.43.0.0/16", "http://mirror.internal/k3s", False),
    ("10.43.0.1/16", "http://10.43.200.1/k3s", True),
    ("fd00::/8", "http://[fd12::7]/k3s", True),
    ("fd00::/8", "http://10.43.1.1/k3s", False),
    ("not-a/range", "http://10.43.1.1/k3s", False),
    ("192.168.1.5", "http://192.168.1.5:8080/k3s", True),
    ("192.168.1.5", "http://192.168.1.50/k3s", False),
    ("192.168.1.5:8080", "http://192.168.1.5:8080/k3s", True),
    ("192.168.1.5:80", "http://192.168.1.5:8080/k3s", False),
    ("::1", "http://[::1]:8080/k3s", True),
    ("[::1]", "http://[::1]:8080/k3s", True),
    ("localhost", "http://127.0.0.1/k3s", False),
    ("2.3", "http://10.1.2.3/k3s", False),
    ("1.2.3", "http://10.1.2.3/k3s", False),
    (".internal", "http://10.1.2.3/k3s", False),
])
def test_no_proxy(no_proxy: str, url: str, exempt: bool) -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "HTTP_PROXY": "http://p:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(url, env) is None) is exempt


def test_no_proxy_uppercase_wins_and_an_exempt_url_needs_no_usable_proxy() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "no_proxy": "github.com", "NO_PROXY": "example.com"}
    assert proxy_for(GH, env) == Proxy("p", 3128)
    assert proxy_for(GH, {"HTTPS_PROXY": "socks5://p:1", "NO_PROXY": "github.com"}) is None


def test_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for(GH) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://from-env:3128")
    assert proxy_for(GH) == Proxy("from-env", 3128)
