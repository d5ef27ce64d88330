# systemd-networkd configures every wired NIC (static/etc/systemd/network);
# do not let debootstrap write ifupdown stanzas for eth0.
export DIB_APT_MINIMAL_CREATE_INTERFACES=0
export DIB_RELEASE=${DIB_RELEASE:-bookworm}
# DIB's base element would add open-iscsi (an iSCSI daemon at boot) to every
# image; nodes that need it get it from the elements that use it (OpenStack).
export DIB_SKIP_BASE_PACKAGE_INSTALL=1
