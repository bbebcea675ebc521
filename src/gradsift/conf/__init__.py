"""The packaged Hydra configs (a package so that ``gradsift-run`` finds them as ``pkg://gradsift.conf``)."""
