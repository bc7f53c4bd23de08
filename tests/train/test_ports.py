"""Ports for a local Ray head: distinct, and free when handed out."""

from __future__ import annotations

import socket

from napari_rat.train.distributed import free_ports


def test_free_ports_are_distinct_and_bindable():
    for _ in range(50):  # one call of free_port() per port gave duplicates now and then
        ports = free_ports(9)
        assert len(set(ports)) == 9
    held = []
    try:
        for port in ports:  # all still free: each can be bound
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in held:
            s.close()
