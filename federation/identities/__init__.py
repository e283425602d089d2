"""identities"""
