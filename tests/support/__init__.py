"""
What the tests share: servers to run, clients, certificates, wire forms.
Test modules import from here, never from each other.
"""
