"""Tests of popsrv.wire."""
