#!/bin/sh
# Runs the OpenWrt init script's start_service and service_triggers against a UCI file, with
# stand-ins for what /etc/rc.common, /lib/functions.sh and procd provide, and prints what it
# asked procd for, one item a line:
#   arg WORD              a word of the instance's command line
#   param NAME VALUE...   another procd_set_param
#   json FUNCTION ARG...  the service data (procd_open_data ... procd_close_data)
#   trigger KIND ARG...   a procd_add_*_trigger
# Usage: render.sh UCI_FILE [INIT_SCRIPT]. Used by portproxy's packaging tests.
set -u # as /etc/rc.common, without -e; -u catches a misspelt variable

uci_file=$1
init_script=${2:-$(dirname "$0")/../net/portproxy/files/portproxy.init}

# /lib/functions.sh: a UCI file is shell code once `config` and `option` are functions (that
# is how config_load reads `uci export`). Values live in CONFIG_<section>_<option>.
section=
config() { section=${2:-$1}; }
option() { eval "CONFIG_${section}_$1=\$2"; }
list() { option "$@"; }
# shellcheck source=/dev/null # the UCI file under test
config_load() { . "$uci_file"; }
config_get() {
	eval "_value=\${CONFIG_$2_$3-}"
	[ -n "$_value" ] || _value=${4-}
	eval "$1=\$_value"
}
config_get_bool() {
	config_get _raw "$2" "$3" "${4-}"
	case "$_raw" in
	1 | on | true | yes | enabled) _raw=1 ;;
	0 | off | false | no | disabled) _raw=0 ;;
	*) _raw=${4-} ;;
	esac
	eval "$1=\$_raw"
}

# procd.sh and jshn.sh: record the calls.
procd_open_instance() { :; }
procd_close_instance() { :; }
procd_set_param() {
	name=$1
	shift
	if [ "$name" = command ]; then
		procd_append_param command "$@"
	else
		echo "param $name $*"
	fi
}
procd_append_param() {
	shift
	for word in "$@"; do echo "arg $word"; done
}
procd_open_data() { :; }
procd_close_data() { :; }
json_add_array() { echo "json add_array $*"; }
json_close_array() { echo "json close_array"; }
json_add_object() { echo "json add_object $*"; }
json_close_object() { echo "json close_object"; }
json_add_string() { echo "json add_string $*"; }
procd_add_reload_trigger() { echo "trigger reload $*"; }
procd_add_interface_trigger() { echo "trigger interface $*"; }

# shellcheck source=/dev/null # the init script, checked on its own
. "$init_script"
start_service
service_triggers
