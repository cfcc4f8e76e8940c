# fleetprov_texts: the words of fleetprov's failures.
#
# fleetprov imports this module only when an operation fails (fleetprov._err),
# so a board that provisions without a hitch never holds these strings in
# RAM; the first boot releases it with the rest of the provisioning code. TEXTS[n] is the
# text of fleetprov's constant named in its comment, whose value is n (a
# const() name costs fleetprov no RAM; a str key would be interned for good).
# Each {} takes fleetprov's arguments in order; a text may leave a trailing
# one out. tests/host/test_fleetprov_texts.py checks names, order and counts.
# No text may take a private key or an ownership token: fleetprov passes type
# names, never values, where a value could be one.

TEXTS = (
    # Parameters (BAD_PARAMETER, INIT_FAILED, NO_MEMORY, NOT_INITIALIZED)
    # 0 _NOT_A_CLIENT
    "client has no {}(): pass an umqtt.simple MQTTClient",
    # 1 _SET_CALLBACK_RAISED
    "client.set_callback() raised {!r}",
    # 2 _NO_CBOR
    'fmt="cbor" needs lib/cbor.py on the device',
    # 3 _BAD_FMT
    'fmt must be "json" or "cbor", not {!r}',
    # 4 _NOT_POSITIVE
    "{} must be a positive int, not {!r}",
    # 5 _NOT_TEXT
    "{} must be a non-empty str, not {}",
    # 6 _NO_RX_MEMORY
    "no memory for rx_size={}",
    # 7 _BAD_QOS
    "qos must be 0 or 1, not {!r}",
    # 8 _BAD_TEMPLATE_NAME
    "template_name must be {}, not {!r}",
    # 9 _BAD_PARAMETERS
    "parameters must be a dict of str to str, or None",
    # 10 _IN_PROGRESS
    "{} is in progress",
    # 11 _CLOSED
    "closed; create a new Provisioner",
    # The link (MQTT_ERROR, NO_MEMORY, TIMEOUT)
    # 12 _SUBACK_REFUSED
    "{} refused (SUBACK 0x80): the claim policy must allow iot:Subscribe on it",
    # 13 _LINK_FAILED
    "{} failed: {}; reconnect and retry",
    # 14 _LINK_OUT_OF_MEMORY
    "{} out of memory",
    # 15 _NO_ANSWER
    "no answer on {}/accepted|rejected in {} ms; check endpoint, template, claim policy (iot:Receive)",
    # Requests and answers (INTERNAL_FAILURE, BAD_RESPONSE, NO_MEMORY, SERVER_REFUSED)
    # 16 _CANNOT_ENCODE
    "cannot encode the request: {}",
    # 17 _CANNOT_DECODE
    "cannot decode the {}-byte response: {}",
    # 18 _TOO_LARGE
    "the {}-byte response does not fit the {}-byte receive buffer; use rx_size={} or more",
    # 19 _NOT_A_MAP
    "the response is {}, not a map",
    # 20 _FIELD_NOT_TEXT
    "{} is {}, not text",
    # 21 _CONFIGURATION_NOT_TEXT
    "deviceConfiguration is not a map of text to text",
    # 22 _NO_STATUS_CODE
    "rejected response without integer statusCode",
    # 23 _REFUSED
    "refused by the server: {} {}: {}",
    # 24 _BAD_BUFFER
    "rx_buffer must be a bytearray, not {}",
    # 25 _BAD_NAME
    "{} {!r} is not {}; refusing the answer",
    # 26 _BAD_REQUEST
    "topic must be bytes and message a dict, not {} and {}",
)
