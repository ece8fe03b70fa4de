{
  "dsseEnvelope": {
    "payload": "ewogICJfdHlwZSI6ICJodHRwczovL2luLXRvdG8uaW8vU3RhdGVtZW50L3YxIiwKICAicHJlZGljYXRlIjogewogICAgInJlc291cmNlcyI6IFsKICAgICAgewogICAgICAgICJhbGdvcml0aG0iOiAic2hhMjU2IiwKICAgICAgICAiZGlnZXN0IjogImUzNDY0MzIwMjFiMDQxNzk1MThkOTYxNGYzNTYwY2NkNzEzNTRhNGVlMTAxZGRjYjg5M2Q2OTU5YTlkNjMwMWMiLAogICAgICAgICJuYW1lIjogImNvbmZpZy5qc29uIgogICAgICB9LAogICAgICB7CiAgICAgICAgImFsZ29yaXRobSI6ICJzaGEyNTYiLAogICAgICAgICJkaWdlc3QiOiAiNzNjYjM4NThhNjg3YTg0OTRjYTMzMjMwNTMwMTYyODJmM2RhZDM5ZDQyY2Y2MmNhNGU3OWRkYTJhYWM3ZDlhYyIsCiAgICAgICAgIm5hbWUiOiAidy5iaW4uc2FmZXRlbnNvcnMiCiAgICAgIH0KICAgIF0sCiAgICAic2VyaWFsaXphdGlvbiI6IHsKICAgICAgImFsbG93X3N5bWxpbmtzIjogZmFsc2UsCiAgICAgICJoYXNoX3R5cGUiOiAic2hhMjU2IiwKICAgICAgImlnbm9yZV9wYXRocyI6IFsKICAgICAgICAiLmdpdCIsCiAgICAgICAgIi5naXRodWIiLAogICAgICAgICIuZ2l0aWdub3JlIiwKICAgICAgICAiLmdpdGF0dHJpYnV0ZXMiCiAgICAgIF0sCiAgICAgICJtZXRob2QiOiAiZmlsZXMiCiAgICB9CiAgfSwKICAicHJlZGljYXRlVHlwZSI6ICJodHRwczovL21vZGVsX3NpZ25pbmcvc2lnbmF0dXJlL3YxLjAiLAogICJzdWJqZWN0IjogWwogICAgewogICAgICAiZGlnZXN0IjogewogICAgICAgICJzaGEyNTYiOiAiYjRlN2JhNDgxNTc1OGUxNWU4NTZiZmZmYjBiOTVkYmNlNzg4ZTFkNmU3OTBmNGE3N2MzM2EzNWUwMDMxN2E5ZSIKICAgICAgfSwKICAgICAgIm5hbWUiOiAibSIKICAgIH0KICBdCn0=",
    "payloadType": "application/vnd.in-toto+json",
    "signatures": [
      {
        "keyid": "",
        "sig": "MEYCIQDPTHf4fxXanV4/Jbcg+gF/FnMOq7DMREcX5XrZj0zm2AIhAJA/3CnLyuzuPf9pYMhvoUhvfnfqquUgo6GQSZ2ZF2RJ"
      }
    ]
  },
  "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {
    "publicKey": {
      "hint": "ce7f6cf7dd42b84e0ca87c330b88a48a8f044b76a78615a5a20bd5e74ffc339d"
    },
    "tlogEntries": []
  }
}
