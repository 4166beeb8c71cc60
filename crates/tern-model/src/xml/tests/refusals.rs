//! Documents Tern must refuse, each with a one-line message saying what to do.

use super::{doc, refused, with_devices};
use crate::xml::XmlError;

#[test]
fn refuses_devices_tern_cannot_honour() {
    let err = refused(
        &with_devices("<hostdev mode='subsystem' type='pci'/>"),
        "device <hostdev> (PCI/USB passthrough) is not supported by Tern; remove it from the domain XML",
    );
    assert!(matches!(err, XmlError::Unsupported { .. }));
    for device in ["filesystem", "smartcard", "parallel", "shmem", "vsock"] {
        refused(
            &with_devices(&format!("<{device}/>")),
            &format!("device <{device}>"),
        );
    }
    for (device, named) in [
        ("<redirdev bus='usb' type='tcp'/>", "<redirdev type='tcp'>"),
        ("<tpm model='tpm-crb'><backend type='passthrough'/></tpm>", "<tpm><backend type='passthrough'> (host TPM passthrough)"),
        ("<rng model='virtio'><backend model='egd' type='tcp'/></rng>", "<rng><backend model='egd'>"),
        ("<watchdog model='diag288' action='reset'/>", "<watchdog model='diag288'>"),
        ("<watchdog model='i6300esb' action='dump'/>", "<watchdog action='dump'>"),
        ("<sound model='sb16'/>", "<sound model='sb16'>"),
        ("<channel type='pty'><target type='virtio' name='x'/></channel>", "<channel type='pty'>"),
        ("<channel type='unix'><target type='guestfwd' name='x'/></channel>", "<channel><target type='guestfwd'>"),
        ("<audio id='1' type='pulseaudio'/>", "<audio type='pulseaudio'>"),
        ("<memballoon model='virtio'><address type='ccw' cssid='0xfe'/></memballoon>", "<address type='ccw'>"),
        ("<disk type='file'><driver name='qemu' type='raw' io='posix'/><source file='/a'/><target dev='vda'/></disk>", "<disk><driver io=> value 'posix'"),
        ("<interface type='user'><address type='pci' slot='0x40'/></interface>", "<address type='pci'> value 'slot 0x40"),
    ] {
        refused(&with_devices(device), named);
    }
    refused(
        &with_devices("<graphics type='sdl'/>"),
        "graphics type='sdl'",
    );
    refused(
        &with_devices("<graphics type='vnc' passwd='x'/>"),
        "VNC password",
    );
    refused(
        &with_devices("<interface type='network'/>"),
        "<source network=...> in <interface type='network'>",
    );
    refused(
        &with_devices("<interface type='direct'/>"),
        "interface type='direct'",
    );
    refused(
        &with_devices("<interface type='bridge'/>"),
        "<source bridge=...>",
    );
    refused(
        &with_devices("<interface type='user'><link state='down'/></interface>"),
        "<interface><link>",
    );
    refused(
        &with_devices(
            "<disk type='file' device='floppy'><source file='/f'/><target dev='fda'/></disk>",
        ),
        "device='floppy'",
    );
    refused(
        &with_devices("<disk type='dir'><target dev='vda'/></disk>"),
        "disk type='dir'",
    );
    refused(
        &with_devices("<disk type='file'><driver name='qemu' type='vmdk'/><source file='/a'/><target dev='vda'/></disk>"),
        "disk image format 'vmdk'",
    );
    refused(
        &with_devices(
            "<disk type='file'><source file='/a'/><target dev='vda'/><boot order='0'/></disk>",
        ),
        "<boot order=> value '0'",
    );
    refused(
        &with_devices("<disk type='block'><source file='/a'/><target dev='vda'/></disk>"),
        "a block disk takes <source dev=...>",
    );
    refused(
        &with_devices("<disk type='file'><source file='/a'/><target dev='xvda'/></disk>"),
        "without bus=",
    );
    refused(&with_devices("<serial type='tcp'/>"), "<serial type='tcp'>");
    refused(
        &with_devices("<serial type='file'><target port='0'/></serial>"),
        "<source path=...>",
    );
    refused(
        &with_devices("<graphics type='vnc' listen='1.2.3.4'><listen type='address' address='5.6.7.8'/></graphics>"),
        "must match",
    );
    refused(
        &with_devices("<graphics type='vnc'><listen type='network' network='n'/></graphics>"),
        "listen type='network'",
    );
}

#[test]
fn refuses_unsupported_domain_settings() {
    refused(
        &doc("").replace(
            "<os>",
            "<os><loader readonly='yes' type='pflash' format='qcow2'>/usr/share/OVMF.qcow2</loader>",
        ),
        "<loader format='qcow2'>",
    );
    refused(
        &doc("").replace("<os>", "<os firmware='xen'>"),
        "<os firmware=> value 'xen'",
    );
    refused(
        &doc("<features><gic version='3'/></features>"),
        "<features><gic>",
    );
    refused(
        &doc("<features><hyperv mode='custom'><evil state='on'/></hyperv></features>"),
        "<hyperv><evil>",
    );
    refused(
        &doc("<clock offset='timezone' timezone='Europe/Paris'/>"),
        "<clock offset='timezone'>",
    );
    refused(
        &doc("<clock offset='utc'><timer name='armvtimer'/></clock>"),
        "<timer name='armvtimer'>",
    );
    refused(
        &doc("<cputune><shares>1024</shares></cputune>"),
        "<cputune><shares> (CPU bandwidth needs libvirt's cgroups)",
    );
    refused(
        &doc("<numatune><memnode cellid='0' mode='strict' nodeset='0'/></numatune>"),
        "<numatune><memnode>",
    );
    refused(
        &doc("<iothreads>1</iothreads><iothreadids><iothread id='1'/></iothreadids>"),
        "element <iothreadids>",
    );
    refused(
        &with_devices(
            "<disk type='file'><driver name='qemu' type='raw' iothread='2'/><source file='/a'/><target dev='vda' bus='virtio'/></disk>",
        )
        .replace("<os>", "<iothreads>1</iothreads><os>"),
        "use 1 to 1 (the domain's <iothreads>)",
    );
    refused(
        &with_devices(
            "<disk type='file'><driver name='qemu' type='raw' iothread='1'/><source file='/a'/><target dev='sda' bus='sata'/></disk>",
        )
        .replace("<os>", "<iothreads>1</iothreads><os>"),
        "only virtio disks run in an I/O thread",
    );
    refused(
        &doc("<vcpu placement='auto'>1</vcpu>"),
        "<vcpu placement='auto'>",
    );
    refused(&doc("<bogus/>"), "element <bogus>");
    refused(
        &doc("")
            .replace(
                "<domain type='kvm'>",
                "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
            )
            .replace("</domain>", "<qemu:commandline/></domain>"),
        "element <qemu:commandline> (QEMU command-line passthrough)",
    );
    refused(
        &doc("<cpu mode='host-model'><feature policy='want' name='vmx'/></cpu>"),
        "<cpu><feature policy=> value 'want'",
    );
    refused(
        &doc("<vcpu current='3'>2</vcpu>"),
        "<vcpu current=> value '3'",
    );
    refused(
        &doc("<on_crash>coredump-destroy</on_crash>"),
        "<on_crash> value 'coredump-destroy'",
    );
    refused(
        &doc("<clock offset='variable' adjustment='3'/>"),
        "<clock offset='variable'>",
    );
    refused(
        &doc("").replace("type='kvm'", "type='xen'"),
        "domain type 'xen'",
    );
    refused(
        &doc("").replace("<type>hvm</type>", "<type>linux</type>"),
        "OS type 'linux'",
    );
    refused(&doc("<name>again</name>"), "<name> appears more than once");
}

#[test]
fn refusals_named_in_the_brief() {
    refused("<domain type='kvm'><name>t</name", "not well-formed");
    let malformed = refused(
        "<domain type='kvm'>\n<name>t</nam>\n</domain>",
        "not well-formed",
    );
    assert!(
        malformed.to_string().contains("2:"),
        "position missing: {malformed}"
    );
    refused(
        "<network><name>n</name></network>",
        "root element is <network>",
    );
    refused(
        "<domain xmlns='urn:x' type='kvm'><name>t</name></domain>",
        "root element is <domain xmlns='urn:x'>",
    );
    refused(
        "<domain type='kvm'><memory>1</memory><os><type>hvm</type></os></domain>",
        "<name> is missing",
    );
    refused(
        "<domain type='kvm'><name>t</name><os><type>hvm</type></os></domain>",
        "<memory> is missing",
    );
    refused(
        "<domain type='kvm'><name>t</name><memory>1</memory></domain>",
        "<os> is missing",
    );
    refused(
        "<domain><name>t</name><memory>1</memory><os><type>hvm</type></os></domain>",
        "has no type=",
    );
    refused(
        &with_devices("<interface type='user'><mac address='52:54:00:zz:00:01'/></interface>"),
        "MAC address '52:54:00:zz:00:01' is malformed",
    );
    refused(
        &with_devices("<interface type='user'><mac address='01:00:5e:00:00:01'/></interface>"),
        "multicast",
    );
    refused(
        &with_devices(
            "<interface type='user'><mac address='52:54:00:00:00:01'/></interface>\
                       <interface type='user'><mac address='52:54:00:00:00:01'/></interface>",
        ),
        "used by more than one interface",
    );
    refused(
        &with_devices(
            "<disk type='file'><source file='/a'/><target dev='vda'/></disk>\
                       <disk type='file'><source file='/b'/><target dev='vda'/></disk>",
        ),
        "disk target dev 'vda' is used by more than one disk",
    );
    refused(
        &with_devices("<disk type='file'><target dev='vda'/></disk>"),
        "disk 'vda' has no source",
    );
    refused(
        &doc("").replace("<memory>1024", "<memory unit='KiBB'>1024"),
        "<memory unit=> value 'KiBB' is invalid",
    );
    refused(
        &doc("").replace("<memory>1024", "<memory>-5"),
        "<memory> value '-5' is invalid",
    );
    refused(
        &doc("<uuid>not-a-uuid</uuid>"),
        "<uuid> value 'not-a-uuid' is invalid",
    );
    refused(
        &doc("").replace("<name>t</name>", "<name>a/b</name>"),
        "domain name 'a/b'",
    );
    refused(
        &doc("").replace("<name>t</name>", "<name>a\nb</name>"),
        "domain name 'a\\nb'",
    );
    refused(
        &doc("<currentMemory>2048</currentMemory>"),
        "currentMemory (2048 KiB) is larger than memory (1024 KiB)",
    );
    refused(&doc("<vcpu>0</vcpu>"), "vcpu count 0");
}

#[test]
fn refuses_controllers_and_buses_tern_cannot_build() {
    refused(
        &with_devices("<controller type='pci' index='1' model='pcie-switch-upstream-port'/>"),
        "PCI controller model 'pcie-switch-upstream-port' is not supported",
    );
    refused(
        &with_devices("<controller type='usb' model='ehci'/>"),
        "USB controller model 'ehci'",
    );
    refused(
        &with_devices("<controller type='fdc'/>"),
        "controller type 'fdc'",
    );
    refused(
        &with_devices("<interface type='user'><address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></interface>"),
        "names PCI bus 0x05",
    );
}
