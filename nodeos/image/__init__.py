"""The node image pipeline: manifests, build driver, disk assembly, PXE set, QEMU helpers.

See docs/image.md. Entry points: `nodeos image build|boot|info|validate`
(`nodeos.image.cli.register`).
"""
