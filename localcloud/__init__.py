"""The local cloud: an EC2 emulator (moto) and one real OpenSSH server, both on 127.0.0.1.

The SSH server stands in for every builder instance: it trusts exactly the public keys of the key pairs
that builds registered in the emulator (sshd's AuthorizedKeysCommand asks the emulator for them).
"""
