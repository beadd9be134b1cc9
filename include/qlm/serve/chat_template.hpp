#pragma once
// The chat template of qlm-serve's /v1/chat/completions. GPT-2 was never trained on chat turns and
// has no template of its own, so this is a plain-text one, the shape of a transcript a web-text
// model has seen (docs/serving.md):
//
//   System: {content}\n\n        one block a message, in order; roles System, User, Assistant
//   User: {content}\n\n
//   Assistant:                   the generation prompt: the model writes the assistant's turn
//
// The reply ends at the next turn marker ("\nUser:", "\nSystem:", "\nAssistant:"): those are stop
// strings of every chat request, so a reply never runs on into an invented next turn.
#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace qlm::serve {

struct ChatMessage {
    std::string role;  // system, user, assistant ("developer" is read as system, as OpenAI does)
    std::string content;
};

inline constexpr std::array<std::string_view, 3> kChatTurnMarkers = {"\nUser:", "\nSystem:", "\nAssistant:"};

inline std::string_view chat_role_label(std::string_view role) {
    if (role == "system" || role == "developer") return "System";
    if (role == "user") return "User";
    if (role == "assistant") return "Assistant";
    return {};
}

inline std::string apply_chat_template(const std::vector<ChatMessage>& messages) {
    std::string prompt;
    for (const auto& m : messages) {
        prompt += chat_role_label(m.role);
        prompt += ": ";
        prompt += m.content;
        prompt += "\n\n";
    }
    prompt += "Assistant:";
    return prompt;
}

}  // namespace qlm::serve
