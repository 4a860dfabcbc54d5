//! The ciphertext-blob format: AES-256-GCM under CMK material, encryption context as AAD.
