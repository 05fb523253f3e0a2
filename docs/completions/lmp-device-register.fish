complete -c lmp-device-register -s T -l api-token -d 'API token (visible to every local user in the process list; prefer --api-token-file)' -r
complete -c lmp-device-register -l api-token-file -d 'File holding the API token [env: TOKEN_FILE] [default: /etc/lmp-device-register-token when it exists]' -r -F
complete -c lmp-device-register -s H -l api-token-header -d 'HTTP header that carries the API token' -r
complete -c lmp-device-register -s f -l factory -d 'Factory name [env: DEVICE_FACTORY] [default: LMP_FACTORY of /etc/os-release]' -r
complete -c lmp-device-register -s t -l tags -d 'Only apply updates from Targets with these tags [default: /etc/sota/tag, then LMP_FACTORY_TAG]' -r
complete -c lmp-device-register -s i -l hwid -d 'Hardware id of the device type [default: the MACHINE the agent was built for]' -r
complete -c lmp-device-register -s u -l uuid -d 'Device UUID [default: from the PKCS#11 slot, else random]' -r
complete -c lmp-device-register -s v -l validate-uuid -d 'Refuse a UUID that is not in 8-4-4-4-12 hex form' -r
complete -c lmp-device-register -s n -l name -d 'Device name shown in the dashboard [default: the UUID, or /etc/hostname with USE_HOSTNAME]' -r
complete -c lmp-device-register -s g -l device-group -d 'Put the device into this device group' -r
complete -c lmp-device-register -s p -l production -d 'Mark the device as a production device [env: PRODUCTION]' -r
complete -c lmp-device-register -s d -l sota-dir -d 'Directory for keys and configuration [default: /var/sota]' -r -F
complete -c lmp-device-register -s a -l apps -d 'Comma-separated compose apps to run [env: APPS] [default: the entries of /var/sota/compose-apps]' -r
complete -c lmp-device-register -s A -l restorable-apps -d 'Comma-separated restorable apps [default: on, for all apps, when /var/sota/reset-apps exists]' -r
complete -c lmp-device-register -l start-daemon -d 'Start aktualizr-lite after registering [default: true]' -r
complete -c lmp-device-register -l use-ostree-server -d 'Pull ostree content through the OSTree proxy server [default: true]' -r
complete -c lmp-device-register -l force -d 'Replace an existing registration' -r
complete -c lmp-device-register -s l -l mlock-all -d 'Accepted for compatibility; the agent keeps no secret in swappable buffers for long' -r
complete -c lmp-device-register -s m -l hsm-module -d 'PKCS#11 module (.so) of the HSM [default: HSM_MODULE of /etc/sota/hsm]' -r -F
complete -c lmp-device-register -s P -l hsm-pin -d 'PKCS#11 user PIN (visible in the process list; prefer /etc/sota/hsm)' -r
complete -c lmp-device-register -s S -l hsm-so-pin -d 'PKCS#11 security officer PIN (visible in the process list; prefer /etc/sota/hsm)' -r
complete -c lmp-device-register -l manufacturer-id -d 'Losant: the device\'s manufacturer id [default: manufacturer_id in [losant] of the config file, else the MAC address of the first physical network interface]' -r
complete -c lmp-device-register -l device-api -d 'Registration API endpoint [env: DEVICE_API]' -r
complete -c lmp-device-register -l oauth-api -d 'OAuth2 base URL for interactive authorisation [env: OAUTH_BASE]' -r
complete -c lmp-device-register -l cacert -d 'Trust only the CA certificates in this PEM file for HTTPS, instead of the system roots [env: DEVICE_API_CACERT]' -r -F
complete -c lmp-device-register -l root -d 'Resolve every default path (/etc, /var/sota, /var/lock) under this directory, which must exist' -r -F
complete -c lmp-device-register -l profile -d 'Registration profile (fleet backend) [env: REGISTER_PROFILE] [default: `profile` of the config file, else lmp]' -r
complete -c lmp-device-register -l config -d 'Config file with one table per profile [default: /etc/lmp-device-register.toml when it exists]' -r -F
complete -c lmp-device-register -l retry-deadline -d 'Stop retrying network failures after this many seconds [default: 60, or 1800 with --boot]' -r
complete -c lmp-device-register -l request-timeout -d 'Give up on one HTTP request after this many seconds' -r
complete -c lmp-device-register -l verbose -d 'Also log debug lines (or set RUST_LOG=debug; -v is --validate-uuid, as in the C++ tool)'
complete -c lmp-device-register -l json -d 'Print one JSON object with the result on stdout'
complete -c lmp-device-register -l status -d 'Show what this device is registered as, for every profile with a state dir, and exit; reads only'
complete -c lmp-device-register -l boot -d 'First-boot mode for the systemd unit: an existing registration is success, and network failures are retried until the deadline'
complete -c lmp-device-register -s h -l help -d 'Print help'
complete -c lmp-device-register -s V -l version -d 'Print version'
