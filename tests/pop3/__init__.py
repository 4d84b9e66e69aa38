"""Tests of popsrv.pop3."""
