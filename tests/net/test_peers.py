"""Peer addresses and AE titles: what parses, and what each wrong form is told."""

from __future__ import annotations

import pytest

from dicomlake.net.peers import Peer, TlsFiles, check_ae_title, client_tls, parse_peer, server_tls


@pytest.mark.parametrize(
    ("text", "peer"),
    [
        ("PACS@10.0.0.5:104", Peer("PACS", "10.0.0.5", 104)),
        ("ORTHANC@localhost:4242", Peer("ORTHANC", "localhost", 4242)),
        (" A B @h:1", Peer("A B", "h", 1)),
        ("X@[::1]:11112", Peer("X", "::1", 11112)),
        ("A@B@h:1", Peer("A@B", "h", 1)),
    ],
)
def test_parse_peer(text: str, peer: Peer) -> None:
    assert parse_peer(text) == peer
    assert parse_peer(str(peer)) == peer


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS", "no '@'"),
        ("@h:1", "no AE title"),
        ("   @h:1", "only spaces"),
        ("ABCDEFGHIJKLMNOPQ@h:1", "17 characters"),
        ("A\\B@h:1", "backslash"),
        ("A\tB@h:1", "control character"),
        ("AÉ@h:1", "outside ASCII"),
        ("A@h", "no ':PORT'"),
        ("A@:104", "no host"),
        ("A@h:0", "between 1 and 65535"),
        ("A@h:70000", "between 1 and 65535"),
        ("A@h:x1", "not a number"),
        ("A@::1:104", "brackets"),
        ("A@[::1]104", "[HOST]:PORT"),
        ("A@h/x:104", "not a host"),
    ],
)
def test_bad_peers_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_peer(text)


def test_ae_title_rules() -> None:
    assert check_ae_title("DICOMLAKE") == "DICOMLAKE"
    assert check_ae_title("A" * 16) == "A" * 16
    with pytest.raises(ValueError, match="calling AE title"):
        check_ae_title("", what="calling AE title")


def test_tls_needs_files_that_exist(tmp_path) -> None:
    assert server_tls(TlsFiles()) is None
    assert client_tls(TlsFiles(), "h") is None
    with pytest.raises(ValueError, match="needs --tls-cert"):
        server_tls(TlsFiles(ca=str(tmp_path / "ca.pem")))
    with pytest.raises(ValueError, match="not found"):
        server_tls(TlsFiles(cert=str(tmp_path / "missing.pem")))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        client_tls(TlsFiles(key=str(tmp_path / "k.pem")), "h")
