complete -c lmp-device-register -s T -l api-token -d 'API token (visible to every local user in the process list; prefer --api-token-file)' -r
complete -c lmp-device-register -l api-token-file -d 'File holding the API token [env: TOKEN_FILE] [config: token_file (absolute path)] [default: /etc/lmp-device-register-token, else the OAuth device flow (on a terminal) when that file does not exist]' -r -F
complete -c lmp-device-register -s H -l api-token-header -d 'HTTP header that carries the API token [config: token_header] [default: OSF-TOKEN]' -r
complete -c lmp-device-register -s f -l factory -d 'Factory name ("lmp", what an image without one says, is refused) [env: DEVICE_FACTORY] [config: factory] [default: LMP_FACTORY in /etc/os-release]' -r
complete -c lmp-device-register -s t -l tags -d 'Only apply updates from Targets with these tags [config: tags] [default: /etc/sota/tag, else LMP_FACTORY_TAG in /etc/os-release]' -r
complete -c lmp-device-register -s i -l hwid -d 'Hardware id of the device type (the Yocto MACHINE) [config: hardware_id] [default: HARDWARE_ID at build time, else LMP_MACHINE in /etc/os-release]' -r
complete -c lmp-device-register -s u -l uuid -d 'Device UUID, in 8-4-4-4-12 hex form unless --validate-uuid 0 [default: from the PKCS#11 slot description, else a random v4 UUID]' -r
complete -c lmp-device-register -s v -l validate-uuid -d 'Refuse a UUID that is not in 8-4-4-4-12 hex form [default: true]' -r
complete -c lmp-device-register -s n -l name -d 'Device name shown in the dashboard [config: name] [default: /etc/hostname, when USE_HOSTNAME is on, else the UUID]' -r
complete -c lmp-device-register -s g -l device-group -d 'Put the device into this device group [config: group] [default: none]' -r
complete -c lmp-device-register -s p -l production -d 'Mark the device as a production device [env: PRODUCTION] [config: production (boolean)] [default: PRODUCTION at build time, else false]' -r
complete -c lmp-device-register -s d -l sota-dir -d 'Directory for keys and configuration [config: sota_dir (absolute path)] [default: /var/sota]' -r -F
complete -c lmp-device-register -s a -l apps -d 'Comma-separated compose apps to run [env: APPS] [config: apps (array of strings)] [default: the entries of /var/sota/compose-apps/ (in an image with compose apps), else not sent]' -r
complete -c lmp-device-register -s A -l restorable-apps -d 'Comma-separated restorable apps [default: all apps, when /var/sota/reset-apps exists (in an image with compose apps), else not sent]' -r
complete -c lmp-device-register -l start-daemon -d 'Start aktualizr-lite after registering [config: start_daemon (boolean)] [default: true]' -r
complete -c lmp-device-register -l use-ostree-server -d 'Pull ostree content through the OSTree proxy server [config: use_ostree_server (boolean)] [default: true]' -r
complete -c lmp-device-register -s l -l mlock-all -d 'Accepted for compatibility; the agent keeps no secret in swappable buffers for long' -r
complete -c lmp-device-register -l device-api -d 'Registration API endpoint [env: DEVICE_API] [config: device_api] [default: DEVICE_API at build time, else https://api.foundries.io/ota/devices/]' -r
complete -c lmp-device-register -l oauth-api -d 'OAuth2 base URL for interactive authorisation [env: OAUTH_BASE] [config: oauth_api] [default: OAUTH_BASE at build time, else https://app.foundries.io/oauth]' -r
complete -c lmp-device-register -l cacert -d 'Trust only the CA certificates in this PEM file for HTTPS, instead of the system roots [env: DEVICE_API_CACERT] [config: cacert (absolute path)] [default: the system roots]' -r -F
complete -c lmp-device-register -l manufacturer-id -d 'Losant: the device\'s manufacturer id [config: manufacturer_id] [default: the MAC address of the network card interface names, else of the first one]' -r
complete -c lmp-device-register -s m -l hsm-module -d 'PKCS#11 module (.so) of the HSM [default: HSM_MODULE in /etc/sota/hsm, else a software key]' -r -F
complete -c lmp-device-register -s P -l hsm-pin -d 'PKCS#11 user PIN (visible in the process list; prefer /etc/sota/hsm) [default: HSM_PIN in /etc/sota/hsm]' -r
complete -c lmp-device-register -s S -l hsm-so-pin -d 'PKCS#11 security officer PIN (visible in the process list; prefer /etc/sota/hsm) [default: HSM_SOPIN in /etc/sota/hsm]' -r
complete -c lmp-device-register -l profile -d 'Registration profile (fleet backend) [env: REGISTER_PROFILE] [config: profile (top level)] [default: lmp]' -r
complete -c lmp-device-register -l force -d 'Replace an existing registration' -r
complete -c lmp-device-register -l root -d 'Resolve every default path (/etc, /var/sota, /var/lock) under this directory, which must exist' -r -F
complete -c lmp-device-register -l config -d 'Config file with one table per profile [default: /etc/lmp-device-register.toml when it exists]' -r -F
complete -c lmp-device-register -l retry-deadline -d 'Stop retrying network failures after this many seconds [default: 60, or 1800 with --boot]' -r
complete -c lmp-device-register -l request-timeout -d 'Give up on one HTTP request after this many seconds' -r
complete -c lmp-device-register -l verbose -d 'Also log debug lines (or set RUST_LOG=debug; -v is --validate-uuid, as in the C++ tool)'
complete -c lmp-device-register -l json -d 'Print one JSON object with the result on stdout'
complete -c lmp-device-register -l status -d 'Show what this device is registered as, for every profile with a state dir, and exit; reads only'
complete -c lmp-device-register -l check -d 'Check everything a registration would need (settings, clock, file modes, token, state, servers) without registering, and exit; changes nothing'
complete -c lmp-device-register -l boot -d 'First-boot mode for the systemd unit: an existing registration is success, and network failures are retried until the deadline'
complete -c lmp-device-register -s h -l help -d 'Print help'
complete -c lmp-device-register -s V -l version -d 'Print version'
