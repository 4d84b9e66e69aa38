"""
Authentication below the twisted.cred portal: credentials, SASL
mechanisms, password schemes, checkers and their stores of secrets.
"""
