"""A real SFTP server for the end-to-end tests (asyncssh): password login, chrooted to ROOT.

Usage: sftp_server.py ROOT USERNAME PASSWORD
Prints "PORT <port> FINGERPRINT <SHA256:...>" once it listens on 127.0.0.1, and exits
when its standard input closes (so it never outlives the test binary that started it).
"""
import asyncio
import sys

import asyncssh

ROOT, USERNAME, PASSWORD = sys.argv[1:4]


class Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True  # authentication is required

    def password_auth_supported(self):
        return True

    def validate_password(self, username, password):
        return username == USERNAME and password == PASSWORD


async def main():
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[key], server_factory=Server,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=ROOT), allow_scp=False)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port} FINGERPRINT {key.get_fingerprint('sha256')}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
