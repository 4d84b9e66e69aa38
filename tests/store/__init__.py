"""Tests of popsrv.store."""
