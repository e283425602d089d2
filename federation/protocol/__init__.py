"""The wire protocol, shared by the server and the member client.

Nothing in this package imports from the server (store, api, auth): the
client depends on it, and so does an auditor's verifier.
"""
