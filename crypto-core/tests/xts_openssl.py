"""OpenSSL's own AES-256-XTS (EVP, through the `cryptography` package) for the interop
test in xts_openssl.rs.

stdin: one case per line, "KEY_HEX TWEAK_HEX DATA_HEX" (one data unit each).
stdout: the ciphertext of each case, hex, one per line.
"""
import sys

from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

for line in sys.stdin:
    key, tweak, data = (bytes.fromhex(f) for f in line.split())
    enc = Cipher(algorithms.AES(key), modes.XTS(tweak), backend=default_backend()).encryptor()
    print((enc.update(data) + enc.finalize()).hex())
