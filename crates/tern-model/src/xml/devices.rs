//! Domain XML import: the `<devices>` element.

use super::disk::{parse_boot_order, parse_disk};
use super::guest_devices::{
    parse_address, parse_audio, parse_channel, parse_panic, parse_redirdev, parse_rng, parse_sound,
    parse_tpm, parse_watchdog,
};
use super::import::{
    elements, invalid, missing, parse_number, qualified_name, required_attr, set_once, text,
    unsupported_child, Result,
};
use super::platform::yes_no;
use super::XmlError;
use crate::domain::{
    CharDev, Console, Controller, Devices, Graphics, Input, Interface, InterfaceKind, Serial,
    Video, VirtualPort,
};
use crate::guest::{ControllerDetail, SpiceOptions};
use roxmltree::Node;
use std::path::PathBuf;

/// Children every device may carry that only describe a running instance
/// (libvirt's device alias); accepted and dropped.
const RUNTIME_ONLY: &[&str] = &["alias"];

pub(super) fn is_runtime_only(node: Node) -> bool {
    node.tag_name().namespace().is_none() && RUNTIME_ONLY.contains(&node.tag_name().name())
}

/// Parses `<devices>`. Devices outside the honoured list are refused.
pub(super) fn parse_devices(node: Node) -> Result<Devices> {
    let mut devices = Devices::default();
    let mut unindexed = Vec::new();
    for child in elements(node) {
        if child.tag_name().namespace().is_some() {
            return Err(refuse_device(&qualified_name(child)));
        }
        match child.tag_name().name() {
            "emulator" => set_once(&mut devices.emulator, PathBuf::from(text(child)), child)?,
            "disk" => devices.disks.push(parse_disk(child)?),
            "interface" => devices.interfaces.push(parse_interface(child)?),
            "serial" => {
                let index = u32::try_from(devices.serials.len()).unwrap_or(u32::MAX);
                devices.serials.push(parse_serial(child, index)?);
            }
            "console" => devices.consoles.push(parse_console(child)?),
            "graphics" => devices.graphics.push(parse_graphics(child)?),
            "video" => devices.videos.push(parse_video(child)?),
            "controller" => {
                if child.attribute("index").is_none() {
                    unindexed.push(devices.controllers.len());
                }
                devices.controllers.push(parse_controller(child)?);
            }
            "input" => devices.inputs.push(parse_input(child)?),
            // `<stats period>` is accepted and dropped (the agent polls
            // on its own schedule).
            "memballoon" => {
                set_once(
                    &mut devices.memballoon,
                    required_attr(child, "model")?.to_string(),
                    child,
                )?;
                for c in elements(child) {
                    match c.tag_name().name() {
                        "address" => devices.memballoon_address = parse_address(c)?,
                        "stats" | "alias" => {}
                        _ => return Err(unsupported_child(child, c)),
                    }
                }
            }
            "channel" => devices.channels.push(parse_channel(child)?),
            "rng" => devices.rngs.push(parse_rng(child)?),
            "watchdog" => devices.watchdogs.push(parse_watchdog(child)?),
            "sound" => devices.sounds.push(parse_sound(child)?),
            "audio" => devices.audios.push(parse_audio(child)?),
            "tpm" => devices.tpms.push(parse_tpm(child)?),
            "panic" => devices.panics.push(parse_panic(child)?),
            "redirdev" => devices.redirdevs.push(parse_redirdev(child)?),
            other => return Err(refuse_device(other)),
        }
    }
    number_controllers(&mut devices.controllers, &unindexed)?;
    Ok(devices)
}

/// Gives each controller written without `index=` the lowest index its
/// type leaves free, in document order, as libvirt does (virt-install
/// writes fourteen `<controller type="pci" model="pcie-root-port"/>` and
/// no indexes), then refuses two controllers of one type at one index
/// (USB companions, with `<master>`, share their EHCI controller's).
fn number_controllers(controllers: &mut [Controller], unindexed: &[usize]) -> Result<()> {
    use std::collections::BTreeSet;
    let mut taken: BTreeSet<(String, u32)> = controllers
        .iter()
        .enumerate()
        .filter(|(i, _)| !unindexed.contains(i))
        .map(|(_, c)| (c.controller_type.clone(), c.index))
        .collect();
    for &i in unindexed {
        // A USB companion (`<master startport>`) shares its EHCI's index.
        if controllers[i].detail.master_startport.is_some() {
            let master = controllers[..i]
                .iter()
                .rev()
                .find(|c| c.controller_type == "usb" && c.detail.master_startport.is_none());
            controllers[i].index = master.map_or(0, |m| m.index);
            continue;
        }
        let kind = controllers[i].controller_type.clone();
        let index = (0..)
            .find(|n| !taken.contains(&(kind.clone(), *n)))
            .unwrap_or(0);
        taken.insert((kind, index));
        controllers[i].index = index;
    }
    let mut seen = BTreeSet::new();
    for c in controllers
        .iter()
        .filter(|c| c.detail.master_startport.is_none())
    {
        if !seen.insert((c.controller_type.as_str(), c.index)) {
            return Err(XmlError::InvalidValue {
                what: format!("<controller type='{}' index=>", c.controller_type),
                value: c.index.to_string(),
                expected: "an index no other controller of that type has".to_string(),
            });
        }
    }
    Ok(())
}

/// Refusal of a device element Tern does not honour.
fn refuse_device(name: &str) -> XmlError {
    let why = match name {
        "hostdev" => " (PCI/USB passthrough)",
        "filesystem" => " (host directory sharing)",
        "smartcard" => " (smartcard)",
        "parallel" => " (parallel port)",
        "hub" => " (USB hub)",
        "shmem" => " (shared memory)",
        "vsock" => " (vsock)",
        "memory" => " (memory hotplug DIMM)",
        "iommu" => " (virtual IOMMU)",
        "lease" => " (lock lease)",
        _ => "",
    };
    XmlError::Unsupported {
        what: format!("device <{name}>{why}"),
        fix: "remove it from the domain XML".to_string(),
    }
}

fn parse_interface(node: Node) -> Result<Interface> {
    let interface_type = required_attr(node, "type")?;
    if !matches!(interface_type, "user" | "bridge" | "network") {
        return Err(XmlError::Unsupported {
            what: format!("<interface type='{interface_type}'>"),
            fix: "use type='network' with <source network=...> (a Tern network: net-define-as), type='bridge' with <source bridge=...> or type='user'".to_string(),
        });
    }
    let mut bridge = None;
    let mut mac = None;
    let mut model = None;
    let mut virtualport = None;
    let mut boot_order = None;
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "mac" => {
                // Checked by `validate`, which wants the canonical lower case.
                let address = required_attr(child, "address")?.to_ascii_lowercase();
                set_once(&mut mac, address, child)?;
            }
            "source" if interface_type == "bridge" => {
                let name = required_attr(child, "bridge")?.to_string();
                set_once(&mut bridge, name, child)?;
            }
            "source" if interface_type == "network" => {
                let name = required_attr(child, "network")?.to_string();
                set_once(&mut bridge, name, child)?;
            }
            "model" => set_once(&mut model, required_attr(child, "type")?.to_string(), child)?,
            "virtualport" => set_once(&mut virtualport, parse_virtualport(child)?, child)?,
            "boot" => set_once(&mut boot_order, parse_boot_order(child)?, child)?,
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            // The host tap device name, chosen at start.
            "target" => {}
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    let kind = match interface_type {
        "bridge" => InterfaceKind::Bridge {
            bridge: bridge
                .ok_or_else(|| missing("<source bridge=...> in <interface type='bridge'>"))?,
        },
        "network" => InterfaceKind::Network {
            network: bridge
                .ok_or_else(|| missing("<source network=...> in <interface type='network'>"))?,
        },
        _ => InterfaceKind::User,
    };
    Ok(Interface {
        kind,
        mac,
        model,
        virtualport,
        boot_order,
        address: address.flatten(),
    })
}

/// `<virtualport type=...><parameters interfaceid=.../></virtualport>`.
fn parse_virtualport(node: Node) -> Result<VirtualPort> {
    let port_type = required_attr(node, "type")?.to_string();
    let mut interface_id = None;
    for child in elements(node) {
        match child.tag_name().name() {
            // Other parameters (profileid...) are Open vSwitch policy, not guest state.
            "parameters" => {
                if let Some(id) = child.attribute("interfaceid") {
                    set_once(&mut interface_id, id.to_string(), child)?;
                }
            }
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(VirtualPort {
        port_type,
        interface_id,
    })
}

/// The backend of a `<serial>` or `<console>` plus its `<target>`, if any.
/// For a pty the `<source path>` (and console `tty=`) is the pty of the
/// running instance and is ignored.
fn parse_char_backend<'a, 'i>(node: Node<'a, 'i>) -> Result<(CharDev, Option<Node<'a, 'i>>)> {
    let element = node.tag_name().name();
    let backend = required_attr(node, "type")?;
    if !matches!(backend, "pty" | "file") {
        return Err(XmlError::Unsupported {
            what: format!("<{element} type='{backend}'>"),
            fix: "use type='pty', or type='file' with <source path=...>".to_string(),
        });
    }
    let mut path = None;
    let mut target = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "source" => {
                let source = child.attribute("path").map(PathBuf::from);
                set_once(&mut path, source, child)?;
            }
            "target" => set_once(&mut target, child, child)?,
            // libvirt's virtlogd copy of the console (OpenStack writes it);
            // Tern keeps its own console log in the run directory.
            "log" => {}
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    let kind = if backend == "file" {
        let path = path
            .flatten()
            .ok_or_else(|| missing(&format!("<source path=...> in <{element} type='file'>")))?;
        CharDev::File { path }
    } else {
        CharDev::Pty
    };
    Ok((kind, target))
}

/// `<serial>`; without `<target port=...>` the port is its position, as libvirt assigns.
fn parse_serial(node: Node, index: u32) -> Result<Serial> {
    let (kind, target) = parse_char_backend(node)?;
    // Tern builds ISA serial ports, libvirt's default on x86.
    if let Some(t) = target {
        let model = elements(t).find(|c| c.tag_name().name() == "model");
        let kinds = [t.attribute("type"), model.and_then(|m| m.attribute("name"))];
        if let Some(other) = kinds.into_iter().flatten().find(|k| *k != "isa-serial") {
            return Err(XmlError::Unsupported {
                what: format!("serial port type '{other}'"),
                fix: "use <target type='isa-serial'> or leave the type out".to_string(),
            });
        }
    }
    let port = match target.and_then(|t| t.attribute("port")) {
        Some(port) => parse_number(port, "<serial><target port=>")?,
        None => index,
    };
    Ok(Serial { kind, port })
}

/// `<console>`; the target defaults to serial port 0.
fn parse_console(node: Node) -> Result<Console> {
    let (kind, target) = parse_char_backend(node)?;
    let target_type = target
        .and_then(|t| t.attribute("type"))
        .unwrap_or("serial")
        .to_string();
    let port = match target.and_then(|t| t.attribute("port")) {
        Some(port) => parse_number(port, "<console><target port=>")?,
        None => 0,
    };
    Ok(Console {
        kind,
        target_type,
        port,
    })
}

fn parse_graphics(node: Node) -> Result<Graphics> {
    let kind = required_attr(node, "type")?;
    if kind != "vnc" && kind != "spice" {
        return Err(XmlError::Unsupported {
            what: format!("<graphics type='{kind}'>"),
            fix: "use <graphics type='vnc'> or 'spice', or remove the element".to_string(),
        });
    }
    let mut spice = (kind == "spice").then(SpiceOptions::default);
    if node.attribute("passwd").is_some() {
        return Err(XmlError::Unsupported {
            what: "a VNC password (<graphics passwd=...>)".to_string(),
            fix: "remove passwd= and keep VNC on a trusted address such as listen='127.0.0.1'"
                .to_string(),
        });
    }
    if node.attribute("socket").is_some() {
        return Err(XmlError::Unsupported {
            what: "VNC on a UNIX socket (<graphics socket=...>)".to_string(),
            fix: "remove socket= and use port= / autoport= instead".to_string(),
        });
    }
    let port: Option<i32> = node
        .attribute("port")
        .map(|p| parse_number(p, "<graphics port=>"))
        .transpose()?;
    // libvirt: without autoport=, an absent port or port -1 means autoport.
    let autoport = match node.attribute("autoport") {
        Some("yes") => true,
        Some("no") => false,
        Some(other) => return Err(invalid("<graphics autoport=>", other, "use 'yes' or 'no'")),
        None => matches!(port, None | Some(-1)),
    };
    let mut listen = node.attribute("listen").map(str::to_string);
    let mut listen_child = None;
    for child in elements(node) {
        match (child.tag_name().name(), spice.as_mut()) {
            ("image", Some(spice)) => {
                spice.image_compression = child.attribute("compression").map(str::to_string)
            }
            ("listen", _) => set_once(&mut listen_child, parse_listen(child)?, child)?,
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    if let Some(address) = listen_child.flatten() {
        match &listen {
            Some(attr) if *attr != address => {
                return Err(XmlError::InvalidValue {
                    what: "<graphics><listen address=>".to_string(),
                    value: address,
                    expected: format!("it must match <graphics listen='{attr}'>; make them equal"),
                })
            }
            _ => listen = Some(address),
        }
    }
    Ok(Graphics {
        kind: kind.to_string(),
        port,
        autoport,
        listen,
        spice,
    })
}

/// `<listen type='address' address=...>`; other listen types are refused.
fn parse_listen(node: Node) -> Result<Option<String>> {
    match required_attr(node, "type")? {
        "address" => Ok(node.attribute("address").map(str::to_string)),
        other => Err(XmlError::Unsupported {
            what: format!("<graphics><listen type='{other}'>"),
            fix: "use <listen type='address' address=...> or the listen= attribute".to_string(),
        }),
    }
}

fn parse_video(node: Node) -> Result<Video> {
    let mut video = None;
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "model" => set_once(&mut video, parse_video_model(child)?, child)?,
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    let mut video = video.ok_or_else(|| missing("<video><model type=...>"))?;
    video.address = address.flatten();
    Ok(video)
}

/// `<model type=... vram=... heads=...>`; `ram=`, `vgamem=`, `primary=` and
/// `<acceleration>` are left to QEMU's defaults.
fn parse_video_model(node: Node) -> Result<Video> {
    for child in elements(node) {
        if child.tag_name().name() != "acceleration" {
            return Err(unsupported_child(node, child));
        }
    }
    Ok(Video {
        model: required_attr(node, "type")?.to_string(),
        vram: node
            .attribute("vram")
            .map(|v| parse_number(v, "<video><model vram=>"))
            .transpose()?,
        heads: node
            .attribute("heads")
            .map(|v| parse_number(v, "<video><model heads=>"))
            .transpose()?,
        primary: yes_no(node, "primary")?.unwrap_or(false),
        address: None,
    })
}

/// `<controller>`: its model, the PCI topology (`<model name>`,
/// `<target chassis port>`), USB companions (`<master startport>`) and its
/// address all reach QEMU.
fn parse_controller(node: Node) -> Result<Controller> {
    let mut detail = ControllerDetail {
        ports: node
            .attribute("ports")
            .map(|p| parse_number(p, "<controller ports=>"))
            .transpose()?,
        ..Default::default()
    };
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "model" => detail.model_name = child.attribute("name").map(str::to_string),
            "target" => {
                detail.chassis = child
                    .attribute("chassis")
                    .map(|c| parse_number(c, "<controller><target chassis=>"))
                    .transpose()?;
                detail.port = child.attribute("port").map(str::to_string);
                // busNr/index/numaNode would change the PCI topology further.
                if let Some(attr) = child
                    .attributes()
                    .map(|a| a.name())
                    .find(|a| !matches!(*a, "chassis" | "port"))
                {
                    return Err(XmlError::Unsupported {
                        what: format!("<controller><target {attr}=...>"),
                        fix: "remove the attribute".to_string(),
                    });
                }
            }
            "master" => {
                detail.master_startport = Some(parse_number(
                    required_attr(child, "startport")?,
                    "<controller><master startport=>",
                )?)
            }
            "driver" => {
                detail.queues = child
                    .attribute("queues")
                    .map(|q| parse_number(q, "<controller><driver queues=>"))
                    .transpose()?
            }
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(Controller {
        controller_type: required_attr(node, "type")?.to_string(),
        index: node
            .attribute("index")
            .map_or(Ok(0), |i| parse_number(i, "<controller index=>"))?,
        model: node.attribute("model").map(str::to_string),
        detail,
        address: address.flatten(),
    })
}

fn parse_input(node: Node) -> Result<Input> {
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(Input {
        input_type: required_attr(node, "type")?.to_string(),
        bus: node.attribute("bus").map(str::to_string),
        address: address.flatten(),
    })
}
